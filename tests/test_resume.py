"""Checkpoint/resume: a run killed mid-way and restarted equals an uninterrupted run exactly."""

import json

import pytest
import torch

from fedcond.distill import get_distiller
from fedcond.errors import FedcondError


class Crash(Exception):
    pass


def crash_at(iteration):
    def cb(i, total, metrics):
        if i == iteration:
            raise Crash()

    return cb


def distill(dataset, method, options, callbacks=None, seed=0):
    d = get_distiller(method)
    config = d.config_class.from_dict(options)
    return d.distill(dataset, config, torch.Generator().manual_seed(seed), callbacks=callbacks)


@pytest.mark.parametrize(
    "method, options",
    [
        ("dm", {"ipc": 2, "iterations": 9, "learn_labels": True, "lr_labels": 1.0}),
        # The trained networks are rebuilt from the generator before the checkpoint restores it.
        ("dm", {"ipc": 1, "iterations": 9, "trained_networks": 2, "train_steps": 4, "rho": 0.01, "factor": 2}),
        ("dsa", {"ipc": 2, "iterations": 5, "outer_loop": 2, "inner_loop": 1, "batch_real": 32}),
        ("kip", {"ipc": 2, "iterations": 9, "learn_labels": True, "dsa": True, "batch_real": 32}),
        # Pool networks re-initialised before and after the crash (max_online_steps 3), so
        # the checkpointed pool (weights, Adam states, step counters) is what makes it exact.
        ("frepo", {"ipc": 2, "iterations": 9, "learn_labels": True, "num_models": 2, "max_online_steps": 3,
                   "batch_real": 16}),
    ],
)
def test_killed_and_resumed_run_equals_uninterrupted_run(digits, tmp_path, method, options):
    reference = distill(digits, method, options)
    resumable = {**options, "checkpoint_dir": str(tmp_path), "checkpoint_every": 2, "log_every": 1}
    with pytest.raises(Crash):
        distill(digits, method, resumable, callbacks=[crash_at(4)])  # killed after the checkpoint at 4
    assert (tmp_path / "checkpoint.pt").exists()
    seen = []
    resumed = distill(digits, method, resumable, callbacks=[lambda i, n, m: seen.append(i)])
    assert seen[0] == 5  # continued, not restarted
    assert torch.equal(resumed.images, reference.images)
    assert torch.equal(resumed.labels, reference.labels)
    # A different run length gives different images, so the equality above is not vacuous.
    assert not torch.equal(reference.images, distill(digits, method, {**options, "iterations": 1}).images)


def test_finished_run_can_be_extended(digits, tmp_path):
    options = {"ipc": 1, "iterations": 6}
    reference = distill(digits, "dm", options)
    distill(digits, "dm", {**options, "iterations": 3, "checkpoint_dir": str(tmp_path)})
    extended = distill(digits, "dm", {**options, "checkpoint_dir": str(tmp_path)})
    assert torch.equal(extended.images, reference.images)


def test_checkpoint_of_another_run_is_refused(digits, tmp_path):
    distill(digits, "dm", {"ipc": 1, "iterations": 2, "checkpoint_dir": str(tmp_path)})
    with pytest.raises(FedcondError, match="different run.*lr_images"):
        distill(digits, "dm", {"ipc": 1, "iterations": 2, "lr_images": 0.5, "checkpoint_dir": str(tmp_path)})
    with pytest.raises(FedcondError, match="different run.*seed"):
        distill(digits, "dm", {"ipc": 1, "iterations": 2, "checkpoint_dir": str(tmp_path)}, seed=1)


def test_corrupt_checkpoint_is_a_user_error(digits, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FedcondError, match="cannot read checkpoint"):
        distill(digits, "dm", {"ipc": 1, "iterations": 2, "checkpoint_dir": str(tmp_path)})


def _rewrite_fingerprint(path, edit):
    payload = torch.load(path, weights_only=True)
    values = json.loads(payload["fingerprint"])
    edit(values)
    payload["fingerprint"] = json.dumps(values, sort_keys=True)
    torch.save(payload, path)


def test_checkpoint_from_before_precision_resumes_under_its_earlier_name(digits, tmp_path):
    # Checkpoints written before DM had ``precision`` carry only ``real_precision`` (float32 by default).
    options = {"ipc": 1, "iterations": 4, "precision": "float32"}
    reference = distill(digits, "dm", options)
    distill(digits, "dm", {**options, "iterations": 2, "checkpoint_dir": str(tmp_path)})

    def to_old_form(values):
        del values["precision"]
        values["real_precision"] = "float32"

    _rewrite_fingerprint(tmp_path / "checkpoint.pt", to_old_form)
    resumed = distill(digits, "dm", {**options, "checkpoint_dir": str(tmp_path)})
    assert torch.equal(resumed.images, reference.images)
    # A precision that really differs is still refused.
    with pytest.raises(FedcondError, match="different run.*precision: 'float32' there, 'bfloat16' now"):
        distill(digits, "dm", {**options, "precision": "bfloat16", "checkpoint_dir": str(tmp_path)})
