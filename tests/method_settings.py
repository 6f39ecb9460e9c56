"""Test-only settings shared by the method tests (CPU contract and CUDA)."""

# The smallest settings that still run each method's whole iteration once or twice.
FAST = {
    "dm": {"iterations": 2},
    "dc": {"iterations": 1, "outer_loop": 2, "inner_loop": 1},
    "dsa": {"iterations": 1, "outer_loop": 2, "inner_loop": 1},
    "mtt": {"iterations": 2, "num_experts": 1, "expert_train_epochs": 2, "expert_epochs": 1, "max_start_epoch": 1,
            "syn_steps": 3},
    "dd": {"iterations": 2, "unroll_steps": 3},
    "kip": {"iterations": 2},
    "frepo": {"iterations": 2},
    # The noise is secret (never seeded): classes are kept or dropped by a threshold far from any noise draw.
    "dp-dm": {"iterations": 2, "bank_size": 2, "min_class_size": 50},
}
