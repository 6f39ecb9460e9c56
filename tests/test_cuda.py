"""The distillation core on a CUDA GPU (``pytest -m cuda``; skipped where there is none).

Every method distills on CUDA; CUDA and CPU runs of the same seed agree in distribution
(loss curves and accuracy within noise: the device's random streams and kernels differ,
so the sets are not equal); DM's and DSA's iterations make no host synchronisation;
checkpoints move between the devices; evaluation agrees across them.
"""

from __future__ import annotations

import math

import pytest
import torch

import fedcond.distill.loop as loop
from fedcond.distill import get_distiller, method_names
from fedcond.evaluate import EvalConfig, evaluate_random, evaluate_synthetic
from fedcond.synthetic import SyntheticSet
from method_settings import FAST  # tests/, shared with test_method_contract.py

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


def _distill(data, method: str, device, seed: int = 0, callbacks=None, **options) -> SyntheticSet:
    d = get_distiller(method)
    config = d.config_class.from_dict({**FAST.get(method, {}), **options})
    return d.distill(data, config, torch.Generator().manual_seed(seed), device=device, callbacks=callbacks)


def _agree(a, b, slack: float) -> bool:
    """Two evaluation results agree within noise: 3 standard errors of the difference plus ``slack``."""
    spread = math.sqrt(a.std**2 / len(a.accuracies) + b.std**2 / len(b.accuracies))
    return abs(a.mean - b.mean) <= 3 * spread + slack


@pytest.mark.parametrize("method", method_names())
def test_every_method_distills_on_cuda(digits, digits_public, method):
    sset = _distill(digits_public if method == "dp-dm" else digits, method, CUDA, ipc=2)
    assert sset.images.device.type == "cpu"  # a SyntheticSet always leaves on the CPU
    assert torch.isfinite(sset.images).all()
    assert sset.method == method and sset.num_images > 0


def test_dm_cuda_and_cpu_agree_in_distribution(digits):
    losses: dict[str, list[float]] = {"cpu": [], "cuda": []}
    sets = {}
    for device in ("cpu", "cuda"):
        record = losses[device]
        sets[device] = _distill(digits, "dm", device, ipc=1, iterations=100, log_every=10,
                                callbacks=[lambda i, n, m, record=record: record.append(m["loss"])])
    # Loss curves: the same level over the last half of the run (fresh networks differ per device).
    tail = {k: sum(v[5:]) / len(v[5:]) for k, v in losses.items()}
    assert abs(tail["cuda"] - tail["cpu"]) <= 0.25 * tail["cpu"]
    assert losses["cuda"][-1] < losses["cuda"][0]
    config = EvalConfig(epochs=300)
    on_gpu = digits.to(CUDA)
    acc = {k: evaluate_synthetic(s, on_gpu, config, runs=5) for k, s in sets.items()}
    assert _agree(acc["cuda"], acc["cpu"], slack=0.03), {k: (a.mean, a.std) for k, a in acc.items()}
    assert acc["cuda"].mean > evaluate_random(on_gpu, 1, config, runs=5).mean  # and still worth distilling


@pytest.mark.parametrize("method,options", [("dm", {}), ("dsa", {}), ("dm", {"real_precision": "bfloat16"})])
def test_inner_loop_makes_no_host_synchronisation(digits, method, options, monkeypatch):
    """After a warm-up iteration, every iteration runs under ``set_sync_debug_mode("error")``:
    any call that makes the host wait for the GPU (``.item()``, a blocking copy, ``nonzero``)
    raises. Progress is logged only at the end, outside the guarded steps."""
    real_run_loop = loop.run_loop
    guarded: list[int] = []

    def run_loop(step, *args, **kwargs):
        def checked(it: int) -> torch.Tensor:
            if it == 0:
                return step(it)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return step(it)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                guarded.append(it)

        return real_run_loop(checked, *args, **kwargs)

    monkeypatch.setattr(loop, "run_loop", run_loop)
    _distill(digits, method, CUDA, ipc=2, iterations=4, log_every=100, **options)
    assert guarded == [1, 2, 3]


def test_dm_in_bfloat16_on_cuda_agrees_with_float32(digits):
    """``real_precision=bfloat16`` (autocast on the GPU's tensor cores) gives sets as good as float32."""
    config = EvalConfig(epochs=300)
    on_gpu = digits.to(CUDA)
    acc = {p: evaluate_synthetic(_distill(digits, "dm", CUDA, ipc=1, iterations=100, real_precision=p), on_gpu,
                                 config, runs=5) for p in ("float32", "bfloat16")}
    assert _agree(acc["bfloat16"], acc["float32"], slack=0.03), {k: (a.mean, a.std) for k, a in acc.items()}


@pytest.mark.parametrize("method", ["dm", "dsa", "mtt", "frepo"])
def test_checkpoints_move_between_gpu_and_cpu(digits, method, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    n = FAST[method]["iterations"]
    on_gpu = _distill(digits, method, CUDA, ipc=2, iterations=n, checkpoint_dir=ckpt)
    # Resumed on the CPU at the same length: nothing left to do, the GPU's tensors come back as they were.
    same = _distill(digits, method, "cpu", ipc=2, iterations=n, checkpoint_dir=ckpt)
    assert torch.equal(same.images, on_gpu.images) and torch.equal(same.labels, on_gpu.labels)
    # Continued on the CPU, then back on the GPU.
    on_cpu = _distill(digits, method, "cpu", ipc=2, iterations=n + 1, checkpoint_dir=ckpt)
    back = _distill(digits, method, CUDA, ipc=2, iterations=n + 2, checkpoint_dir=ckpt)
    for sset in (on_cpu, back):
        assert torch.isfinite(sset.images).all()
    assert not torch.equal(back.images, on_cpu.images)
    assert (
        torch.load(tmp_path / "ckpt" / loop.CHECKPOINT_NAME, map_location="cpu", weights_only=True)["iteration"]
        == n + 2
    )


def test_evaluation_on_cuda_matches_the_cpu(digits):
    idx = torch.cat([torch.nonzero(digits.train_labels == c).flatten()[:5] for c in range(10)])
    sset = SyntheticSet(images=digits.train_images[idx].clone(), labels=digits.train_labels[idx].clone(),
                        classes=digits.classes, mean=digits.mean, std=digits.std, method="random", ipc=5,
                        dataset="digits", seed=0, config={"ipc": 5})
    config = EvalConfig(epochs=100, dsa=True, dsa_strategy="crop_scale_rotate")
    cpu = evaluate_synthetic(sset, digits, config, runs=5)
    gpu = evaluate_synthetic(sset, digits.to(CUDA), config, runs=5)
    assert _agree(gpu, cpu, slack=0.02), (gpu.mean, gpu.std, cpu.mean, cpu.std)
