"""Storage-dtype references re-encode the sets the FedCond run distilled instead of distilling again."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import torch

from fedcond.federated.config import FederateConfig
from fedcond.federated.set_reuse import kept_set_path, set_key


def _reply(cfg: FederateConfig, pid: int = 0):
    """A one-shot FedCond client's reply, in process (the ClientApp's own function)."""
    from flwr.app import ConfigRecord, RecordDict

    from fedcond.federated.records import CONFIGRECORD_KEY
    from fedcond.simulations.client_app import _fedcond_reply

    # the train message's content as Flower delivers it (the client looks for FedAF's knowledge in it too)
    msg = SimpleNamespace(content=RecordDict({CONFIGRECORD_KEY: ConfigRecord({"mode": "oneshot"})}))
    return _fedcond_reply(msg, None, cfg, pid, 1)


def test_the_key_ignores_what_does_not_shape_the_set():
    cfg = FederateConfig(method_options='{"batch_real": 64, "lr_images": 0.5}')
    assert set_key(cfg) == set_key(replace(cfg, storage_dtype="uint8", run_name="fedcond-uint8", strategies="fedcond"))
    assert set_key(cfg) == set_key(replace(cfg, method_options='{"lr_images": 0.5, "batch_real": 64}'))
    for other in ({"iterations": 7}, {"seed": 1}, {"method": "dc"}, {"precision": "bfloat16"}, {"ipc": 3}):
        assert set_key(cfg) != set_key(replace(cfg, **other)), other
    assert kept_set_path(replace(cfg, checkpoint_dir=""), 0) is None  # flwr run: nothing kept
    assert kept_set_path(replace(cfg, checkpoint_dir="c/fedcond", mode="iterative"), 0) is None


def test_a_storage_dtype_reference_reencodes_the_distilled_set(tmp_path):
    from fedcond.federated.records import SET_ARRAYS_KEY, SET_META_KEY, set_from_records

    main = FederateConfig(dataset="digits", num_clients=3, ipc=1, iterations=2, strategy="fedcond",
                          strategies="fedcond", checkpoint_dir=str(tmp_path / "checkpoints" / "fedcond"))
    first = _reply(main)
    assert first["metrics"]["reused-set"] == 0 and kept_set_path(main, 0).is_file()
    uint8 = replace(main, storage_dtype="uint8", run_name="fedcond-uint8",
                    checkpoint_dir=str(tmp_path / "checkpoints" / "fedcond-uint8"))
    second = _reply(uint8)
    assert second["metrics"]["reused-set"] == 1
    a = set_from_records(first[SET_ARRAYS_KEY], first[SET_META_KEY])
    b = set_from_records(second[SET_ARRAYS_KEY], second[SET_META_KEY])
    assert b.storage_dtype == "uint8" and torch.equal(a.labels, b.labels)
    assert second["metrics"]["payload-bytes"] < 0.6 * first["metrics"]["payload-bytes"]  # measured as sent
    # exactly the distilled images, encoded as 8-bit pixels
    from fedcond.synthetic import SyntheticSet

    assert torch.equal(SyntheticSet.from_bytes(replace(a, storage_dtype="uint8").to_bytes()).images, b.images)
    # other settings distill afresh
    assert _reply(replace(uint8, iterations=3))["metrics"]["reused-set"] == 0
    assert _reply(main, pid=1)["metrics"]["reused-set"] == 0
