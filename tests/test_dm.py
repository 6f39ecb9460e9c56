"""DM: the pure loss, learning on digits, partial classes, soft labels, ZCA, a given model (FedDM)."""

import pytest
import torch

from fedcond.distill import DistillInputs, get_distiller
from fedcond.distill.dm import DMConfig, dm_loss, trained_pool
from fedcond.errors import FedcondError
from fedcond.evaluate import EvalConfig, evaluate_random, evaluate_synthetic
from fedcond.models import get_model
from fedcond.synthetic import SyntheticSet
from fedcond.train import accuracy, train_model


def run(dataset, generator_seed=0, callbacks=None, **options):
    dm = get_distiller("dm")
    config = dm.config_class.from_dict({"ipc": 1, "iterations": 20, **options})
    return dm.distill(dataset, config, torch.Generator().manual_seed(generator_seed), callbacks=callbacks)


def test_dm_loss_is_zero_when_means_match_and_has_gradients():
    real = torch.randn(2 * 4, 3)
    weights = torch.full((2, 4), 0.25)
    means = real.view(2, 4, 3).mean(1)
    syn = means.clone().requires_grad_(True)
    assign = torch.eye(2)
    assert dm_loss(lambda x: x, real, weights, syn, assign).item() == pytest.approx(0, abs=1e-10)
    moved = (syn + 1).detach().requires_grad_(True)
    loss = dm_loss(lambda x: x, real, weights, moved, assign)
    assert loss.item() == pytest.approx(2 * 3, rel=1e-5)  # 2 classes x 3 dims x 1^2
    loss.backward()
    assert torch.allclose(moved.grad, torch.full_like(moved, 2.0))
    chunked = dm_loss(lambda x: x, real, weights, moved, assign, chunk=3)
    assert chunked.item() == pytest.approx(loss.item())


def test_loss_decreases_and_images_move(digits):
    logged = []
    sset = run(digits, iterations=40, callbacks=[lambda i, n, m: logged.append((i, n, m["loss"]))])
    assert [i for i, _, _ in logged] == [10, 20, 30, 40] and all(n == 40 for _, n, _ in logged)
    assert logged[-1][2] < 0.7 * logged[0][2]
    start = run(digits, iterations=0)
    assert not torch.allclose(sset.images, start.images)
    assert sset.method == "dm" and sset.num_images == 10 and sset.class_counts() == [1] * 10


def test_beats_random_real_images_at_ipc1(digits):
    # Measured (3 seeds, 2 eval runs, 300 epochs): DM 40 iterations beat random by
    # +0.20..+0.24; 0 iterations (the real init, i.e. images never updated) by -0.04..+0.05.
    config = EvalConfig(epochs=300)
    sset = run(digits, iterations=40)
    distilled = evaluate_synthetic(sset, digits, config, runs=2).mean
    random = evaluate_random(digits, 1, config, runs=2).mean
    assert distilled > random + 0.10, (distilled, random)


def test_only_present_classes_with_up_to_ipc_each(digits):
    labels = digits.train_labels
    idx = torch.cat([torch.nonzero(labels == 1).flatten(), torch.nonzero(labels == 3).flatten(),
                     torch.nonzero(labels == 5).flatten()[:2]])
    sset = run(digits.subset(idx), ipc=3, iterations=3)
    assert sset.class_counts() == [0, 3, 0, 3, 0, 2, 0, 0, 0, 0]
    assert sset.config["present_classes"] == [1, 3, 5]
    assert sset.num_classes == 10


def test_learned_soft_labels_round_trip_and_train(digits, tmp_path):
    sset = run(digits, iterations=10, learn_labels=True)
    assert sset.soft_labels and sset.labels.shape == (10, 10)
    assert torch.allclose(sset.labels.sum(1), torch.ones(10), atol=1e-5)
    init = torch.softmax(torch.eye(10) * DMConfig().label_init_scale, dim=1)
    assert not torch.allclose(sset.labels, init, atol=1e-4)  # the labels were learned
    assert torch.equal(sset.hard_labels, torch.arange(10))
    sset.save(tmp_path / "soft.safetensors")
    back = SyntheticSet.load(tmp_path / "soft.safetensors")
    assert torch.equal(back.labels, sset.labels)
    model = get_model("convnet", 1, 10, (8, 8), seed=0)
    train_model(model, back.images, back.labels, epochs=30, generator=torch.Generator().manual_seed(0))
    assert accuracy(model, digits.test_images, digits.test_labels) > 0.3


def test_noise_init_and_zca_are_recorded_and_evaluable(digits):
    sset = run(digits, iterations=5, init="noise", zca=True)
    assert sset.config["zca"] is True and sset.config["zca_regularization"] == 0.1
    assert sset.config["init"] == "noise"
    result = evaluate_synthetic(sset, digits, EvalConfig(epochs=5), runs=1)
    assert 0 <= result.mean <= 1


def test_given_embedding_model_is_used_and_left_trainable(digits):
    model = get_model("convnet", 1, 10, (8, 8), seed=0)
    dm = get_distiller("dm")
    sset = dm.distill(digits, DMConfig(ipc=1, iterations=3), torch.Generator().manual_seed(0),
                      inputs=DistillInputs(embed_model=model))
    assert sset.num_images == 10
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def _embedding_gap(model, data, sset):
    """Sum over the set's classes of ||mean embed(real_c) - mean embed(syn_c)||^2 under ``model``."""
    with torch.no_grad():
        return sum(float(((model.embed(data.train_images[data.train_labels == c]).flatten(1).mean(0)
                           - model.embed(sset.images[sset.hard_labels == c]).flatten(1).mean(0)) ** 2).sum())
                   for c in sset.hard_labels.unique())


def test_with_an_embed_model_a_starting_set_moves_toward_its_class_means(digits):
    """FedDM's refinement: DM under a fixed (global) model, from a given set."""
    model = get_model("convnet", 1, 10, (8, 8), seed=0).eval()
    start = run(digits, iterations=0, ipc=2, init="noise")
    config = DMConfig(ipc=2, iterations=40, dsa=False, batch_real=1000)
    sset = get_distiller("dm").distill(digits, config, torch.Generator().manual_seed(0),
                                       inputs=DistillInputs(initial=start, embed_model=model))
    assert torch.equal(sset.hard_labels, start.hard_labels)
    assert _embedding_gap(model, digits, sset) < 0.2 * _embedding_gap(model, digits, start)


def test_perturbed_embed_model_and_classes_the_data_lacks(digits):
    """rho > 0 matches in perturbed copies and leaves the caller's model alone; a starting
    set's images of classes absent from the data weigh nothing and stay as they were."""
    model = get_model("convnet", 1, 10, (8, 8), seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = run(digits, iterations=0, ipc=1, init="noise")
    local = digits.subset(torch.nonzero(digits.train_labels < 5).flatten())
    config = DMConfig(ipc=1, iterations=10, dsa=False, rho=0.05)
    sset = get_distiller("dm").distill(local, config, torch.Generator().manual_seed(0),
                                       inputs=DistillInputs(initial=start, embed_model=model))
    absent = start.hard_labels >= 5
    assert torch.equal(sset.images[absent], start.images[absent])
    assert not torch.allclose(sset.images[~absent], start.images[~absent])
    assert sset.config["present_classes"] == [0, 1, 2, 3, 4] and sset.config["rho"] == 0.05
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(FedcondError, match="rho"):
        DMConfig(rho=-1.0)


def test_trained_networks_are_trained_longer_by_rank_and_change_the_set(digits):
    """IDM's model sampling: pool network k of n trained k * train_steps / n steps, so the
    last separates the classes far better than a fresh one; matching in them moves the set."""
    config = DMConfig(ipc=1, trained_networks=2, train_steps=60)
    pool = trained_pool(config, digits, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert len(pool) == 2 and not any(p.requires_grad for net in pool for p in net.parameters())
    fresh = get_model("convnet", 1, 10, (8, 8), seed=0)
    accs = [accuracy(net, digits.train_images, digits.train_labels) for net in (fresh, *pool)]
    assert accs[2] > 0.6 and accs[2] > accs[0] + 0.3, accs
    assert trained_pool(DMConfig(ipc=1), digits, torch.Generator(), torch.device("cpu")) == []
    plain, trained = run(digits, iterations=10), run(digits, iterations=10, trained_networks=2, train_steps=20)
    assert not torch.allclose(plain.images, trained.images)
    assert torch.equal(trained.images, run(digits, iterations=10, trained_networks=2, train_steps=20).images)
    assert trained.config["trained_networks"] == 2
    with pytest.raises(FedcondError, match="trained_networks"):  # FedDM's given model and a pool: one or the other
        get_distiller("dm").distill(digits, DMConfig(ipc=1, iterations=1, trained_networks=1), torch.Generator(),
                                    inputs=DistillInputs(embed_model=fresh))


def test_bad_options_are_user_errors():
    with pytest.raises(FedcondError, match="init"):
        DMConfig.from_dict({"init": "zeros"})
    with pytest.raises(FedcondError, match="unknown option"):
        DMConfig.from_dict({"iters": 3})
    with pytest.raises(FedcondError, match="log_every"):
        DMConfig(log_every=0)
    with pytest.raises(FedcondError, match="trained_networks"):
        DMConfig(trained_networks=-1)


def test_batch_norm_network_keeps_the_set_on_the_real_pixel_scale(digits):
    """Batch norm hides a set's overall scale from DM's loss; the set must not drift along it
    (it did: pixel std 4.7 against 1.0, and distilled replay with convnet-bn fell to naive)."""
    keep = digits.train_labels < 2
    from fedcond.continual.experience import experience_dataset

    data = experience_dataset(digits.train_images[keep], digits.train_labels[keep], 10, digits.mean, digits.std)
    dm = get_distiller("dm")
    sset = dm.distill(data, dm.config_class(ipc=1, model="convnet-bn", iterations=30), torch.Generator().manual_seed(0))
    real = data.train_images
    assert sset.images.std().item() == pytest.approx(real.std().item(), rel=0.05)
    assert sset.images.mean().item() == pytest.approx(real.mean().item(), abs=0.05)


def _skewed(digits, counts):
    """A partition holding ``counts[c]`` images of class c (a small, skewed federated client)."""
    labels = digits.train_labels
    return digits.subset(torch.cat([torch.nonzero(labels == c).flatten()[:n] for c, n in enumerate(counts) if n]))


def test_small_skewed_partitions_embed_only_their_real_images_and_give_the_padded_result(digits, monkeypatch):
    """Issue 15: a class batch is as wide as the largest class; smaller classes used to fill
    it with zero-weight padding that was embedded all the same. Now only real images are
    embedded, and the set is bit for bit the one the padded batch gave."""
    import fedcond.distill.dm as dm_module
    from fedcond.distill import matching

    counts = [5, 1, 1, 0, 3, 0, 7, 0, 21, 3]  # an MNIST Dirichlet(0.5) client: 41 images, 7 classes
    data = _skewed(digits, counts)
    embedded = []
    loss = dm_module.dm_loss

    def counting(embed_fn, real, *args, **kwargs):
        embedded.append(real.shape[0])
        return loss(embed_fn, real, *args, **kwargs)

    monkeypatch.setattr(dm_module, "dm_loss", counting)
    compact = run(data, iterations=4, ipc=2)
    assert embedded == [sum(counts)] * 4  # padded: 7 classes x 21 slots = 147 per iteration

    create = matching.SiameseBatches.create.__func__
    monkeypatch.setattr(matching.SiameseBatches, "create",
                        classmethod(lambda cls, *a, **k: create(cls, *a, **{**k, "compact": False})))
    embedded.clear()
    padded = run(data, iterations=4, ipc=2)
    assert embedded == [7 * 21] * 4
    assert torch.equal(compact.images, padded.images) and torch.equal(compact.labels, padded.labels)


@pytest.mark.parametrize("counts,chunk", [([3, 1, 2], None), ([1], None), ([2, 1, 5], 4), ([5, 5, 1], 4),
                                          ([4, 1, 2], 4), ([3, 3, 3], 4), ([1, 2, 3], 3), ([3, 1, 1], 2)])
def test_compact_embedding_matches_the_padded_chunks_even_for_a_lone_image(counts, chunk):
    """An image embedded alone takes another CPU kernel (last-bit differences): the compact
    batch embeds an image alone exactly where the padded chunks did. The embedding here
    marks lone calls, so any mismatch shows."""
    from fedcond.distill.matching import RealSlots, embed_chunked
    from fedcond.sampling import ClassSampler

    def embed(x):
        return x.flatten(1) * 2 + (0.5 if x.shape[0] == 1 else 0.0)

    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    sampler = ClassSampler.from_labels(labels, len(counts))
    images = torch.randn(labels.numel(), 1, 2, 2)
    idx = sampler.sample(100, torch.Generator().manual_seed(0))
    valid = sampler.valid(100)
    weights = sampler.weights(100, torch.device("cpu"))
    padded = embed_chunked(embed, images[idx.flatten()], chunk)
    slots = RealSlots.create(valid, chunk, torch.device("cpu"))
    compact = slots.embed(embed, images[idx[valid]], chunk)
    assert torch.equal(compact[valid.flatten()], padded[valid.flatten()])
    assert torch.equal(compact[~valid.flatten()], torch.zeros_like(compact[~valid.flatten()]))
    assert torch.equal(weights.flatten() > 0, valid.flatten())


def test_bfloat16_precision_embeds_real_and_synthetic_images_in_bfloat16(digits, monkeypatch):
    """``real_precision="bfloat16"``: both embedding passes run under autocast in channels-last
    networks (the images stay float32); the default changes nothing."""
    import fedcond.distill.dm as dm_module

    seen, layouts = [], set()
    loss = dm_module.dm_loss

    def recording(embed_fn, real, *args, **kwargs):
        # the last conv: a 1-channel first conv's weight is contiguous in both layouts
        conv = [m for m in embed_fn.__self__.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        layouts.add(conv.weight.is_contiguous(memory_format=torch.channels_last))

        def embed(x):
            out = embed_fn(x)
            seen.append(("syn" if torch.is_grad_enabled() else "real", out.dtype))
            return out
        return loss(embed, real, *args, **kwargs)

    monkeypatch.setattr(dm_module, "dm_loss", recording)
    low = run(digits, iterations=3, real_precision="bfloat16")
    assert set(seen) == {("real", torch.bfloat16), ("syn", torch.bfloat16)}
    assert layouts == {True}  # on a CPU the networks are channels-last (oneDNN's fast layout)
    assert low.images.dtype == torch.float32 and low.config["real_precision"] == "bfloat16"
    seen.clear()
    layouts.clear()
    run(digits, iterations=3, real_precision="float32")  # explicit: auto picks bfloat16 on a CPU with AMX
    assert set(seen) == {("real", torch.float32), ("syn", torch.float32)} and layouts == {False}


def test_bfloat16_real_pass_gives_the_float32_loss_up_to_rounding_and_learns(digits):
    from fedcond.sampling import ClassSampler

    net = get_model("convnet", 1, 10, (8, 8)).eval().requires_grad_(False)
    # The (R, B) layout dm_loss takes: every image of each class, padded with zero weight.
    sampler = ClassSampler.from_labels(digits.train_labels[:400], 10)
    counts, width = sampler.counts, sampler.table.shape[1]
    w = sampler.weights(width, torch.device("cpu"))
    real = digits.train_images[sampler.table.flatten()]
    syn = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    exact = dm_loss(net.embed, real, w, syn, torch.eye(10))
    rounded = dm_loss(net.embed, real, w, syn, torch.eye(10), real_dtype=torch.bfloat16)
    # a class whose synthetic images are its real ones: zero loss in bfloat16 too
    assert dm_loss(net.embed, real[:width], w[:1, :width], real[: int(counts[0])], torch.ones(1, int(counts[0])) /
                   int(counts[0]), real_dtype=torch.bfloat16).item() < 1e-6 * exact.item()
    assert rounded.item() != exact.item()  # the option does change the arithmetic ...
    assert rounded.item() == pytest.approx(exact.item(), rel=1e-2)  # ... by rounding only
    logged = []
    sset = run(digits, iterations=40, real_precision="bfloat16",
               callbacks=[lambda i, n, m: logged.append(m["loss"])])
    assert logged[-1] < 0.7 * logged[0]
    assert not torch.allclose(sset.images, run(digits, iterations=0).images)


def test_bfloat16_sets_still_beat_random_real_images_at_ipc1(digits):
    config = EvalConfig(epochs=300)
    distilled = evaluate_synthetic(run(digits, iterations=40, real_precision="bfloat16"), digits, config, runs=2).mean
    random = evaluate_random(digits, 1, config, runs=2).mean
    assert distilled > random + 0.10, (distilled, random)


def test_real_precision_must_be_float32_or_bfloat16():
    with pytest.raises(FedcondError, match="real_precision"):
        DMConfig(real_precision="float16")


def test_dm_is_the_published_loop_bit_for_bit(digits):
    """DM's step (``DMStep``) with the defaults is exactly this loop, draw for draw: a fresh
    random network, one class-balanced real batch and one DSA draw per class, the loss of
    the class means, one SGD step on the images."""
    from fedcond.augment import DSA
    from fedcond.distill.loop import start_run
    from fedcond.distill.matching import SiameseBatches, embedding_chunk, fresh_network, syn_assignment

    config = DMConfig(ipc=1, iterations=6, precision="float32")
    generator = torch.Generator().manual_seed(3)
    run_ = start_run("dm", digits, config, generator, "cpu")
    chunk = embedding_chunk(run_.device)
    batches = SiameseBatches.create(run_.sampler, run_.syn_class, config.batch_real, DSA(config.dsa_strategy),
                                    run_.device, compact=True, chunk=chunk)
    weights = run_.sampler.weights(config.batch_real, run_.device)
    assign = syn_assignment(batches.syn_rows, run_.sampler.num_rows, None, run_.sampler.classes)
    net = None
    for _ in range(config.iterations):
        net = fresh_network(config.model, run_.dataset, generator, run_.device, reuse=net).requires_grad_(False)
        real, syn = batches.draw(run_.dataset.train_images, run_.state.images, generator)
        loss = dm_loss(net.embed, real, weights, syn, assign, chunk, batches.slots)
        run_.state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run_.state.optimizer.step()
    sset = get_distiller("dm").distill(digits, config, torch.Generator().manual_seed(3))
    assert torch.equal(sset.images, run_.state.images.detach())
