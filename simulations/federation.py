"""What the ServerApp checks when Flower launches it (``flwr run .``, a SuperLink), before any work.

Flower sizes a federation itself: its local simulation starts 2 SuperNodes unless told
otherwise (``flwr run . --federation-config "num-supernodes=N"``, or ``flwr federation
simulation-config``, which a SuperLink forgets when it restarts), and a deployment has
the SuperNodes its operators started. The run config's ``num-clients`` says how many
partitions the data is cut into. When the two differ, clients would train on partitions
of another split than the server assumes, or extra clients would find no partition; so
:func:`check_federation` stops the run at once with one line saying how to fix it.

:func:`ignored_settings` explains the run-config keys that do nothing in a run launched
this way: ``rounds`` in a one-shot FedCond run, and the comparison settings only
``fedcond federate`` reads (it runs every strategy with its references; ``flwr run``
runs ``strategy`` alone). The in-process runner (``fedcond federate``) sizes its
simulation from ``num-clients`` itself and skips both.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

from fedcond.errors import FedcondError
from fedcond.federated.config import FederateConfig, run_config_key

# Read only by `fedcond federate`, which compares strategies with their references.
COMPARISON_SETTINGS = ("strategies", "storage_dtypes", "random_reference", "dp_epsilons", "central_max_epochs",
                       "central_patience")
SIMULATION_SETTLE_SECONDS = 1.0  # the simulation registers all its SuperNodes within milliseconds of each other
SIMULATION_MAX_WAIT_SECONDS = 30.0
DEPLOYMENT_LOG_EVERY_SECONDS = 30.0


def is_simulation(grid: Any) -> bool:
    """Whether ``grid`` is the Simulation Engine's (virtual SuperNodes, all registered at start)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid  # noqa: PLC0415

    return isinstance(grid, InMemoryGrid)


def federation_size(grid: Any, cfg: FederateConfig, log: Any = None, poll: float = 0.2) -> int:
    """How many SuperNodes the federation has.

    Simulation: Flower registers its virtual SuperNodes just after the ServerApp starts, so
    wait until some are there and their number holds still for a second. Deployment:
    SuperNodes connect when their operators start them, so wait (at most ``round_timeout``)
    until ``num_clients`` of them are connected, logging the count every 30 s.
    """
    say = log or (lambda text: None)
    start = last_log = time.monotonic()
    if is_simulation(grid):
        count, since = -1, start
        while time.monotonic() - start < SIMULATION_MAX_WAIT_SECONDS:
            now_count = len(list(grid.get_node_ids()))
            if now_count != count:
                count, since = now_count, time.monotonic()
            elif count > 0 and time.monotonic() - since >= SIMULATION_SETTLE_SECONDS:
                break
            time.sleep(poll)
        return max(count, 0)
    while True:
        count = len(list(grid.get_node_ids()))
        if count >= cfg.num_clients or time.monotonic() - start >= cfg.round_timeout:
            return count
        if time.monotonic() - last_log >= DEPLOYMENT_LOG_EVERY_SECONDS:
            say(f"waiting for SuperNodes: {count} of num-clients = {cfg.num_clients} connected")
            last_log = time.monotonic()
        time.sleep(poll)


def check_federation(grid: Any, cfg: FederateConfig, log: Any = None) -> int:
    """The federation's size, which must equal ``num-clients``: a ``FedcondError`` saying
    how to make them agree otherwise."""
    size = federation_size(grid, cfg, log)
    if size == cfg.num_clients:
        return size
    if is_simulation(grid):
        fix = (f"run `flwr run . --federation-config \"num-supernodes={cfg.num_clients}\"` "
               f"(or --run-config \"num-clients={size}\")")
    else:
        fix = (f"start exactly {cfg.num_clients} SuperNodes with --node-config "
               f"\"partition-id=<0..{cfg.num_clients - 1}> num-partitions={cfg.num_clients}\" "
               f"(or --run-config \"num-clients={size}\")")
    raise FedcondError(f"the federation has {size} SuperNode(s) but the run config says num-clients = "
                       f"{cfg.num_clients}: {fix}")


def ignored_settings(cfg: FederateConfig) -> list[str]:
    """One sentence per run-config setting that does nothing in this run, when it differs
    from its default (pyproject.toml's defaults are FederateConfig's, so a differing value
    is one the user set)."""
    defaults = {f.name: f.default for f in fields(FederateConfig)}
    notes = []
    if cfg.effective_rounds == 1 and cfg.rounds != defaults["rounds"]:
        notes.append(f"rounds = {cfg.rounds} has no effect: one-shot FedCond runs exactly one round "
                     f"(mode = 'iterative', or strategy = 'fedcond-iterative', 'fedavg', 'fedprox' or 'fedadam', "
                     f"runs rounds)")
    changed = [run_config_key(k) for k in COMPARISON_SETTINGS if getattr(cfg, k) != defaults[k]]
    if changed:
        notes.append(f"{', '.join(changed)}: read only by `fedcond federate` (the whole comparison with its "
                     f"references); this run runs strategy = '{cfg.strategy}' alone")
    return notes
