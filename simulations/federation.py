"""What the ServerApp checks when Flower launches it (``flwr run .``, a SuperLink), before any work.

Flower sizes a federation itself: its local simulation starts 2 SuperNodes unless told
otherwise (``flwr run . --federation-config "num-supernodes=N"``, or ``flwr federation
simulation-config``, which a SuperLink forgets when it restarts), and a deployment has
the SuperNodes its operators started. The run config's ``num-clients`` says how many
partitions the data is cut into; its default, 0, means "the federation's size": the
ServerApp runs on the SuperNodes it finds, one partition each (each SuperNode's node config
says ``num-partitions``; Flower's simulation sets it to its SuperNode count). An explicit
``num-clients`` must equal the federation's size: otherwise clients would train on
partitions of another split than the server assumes, or extra clients would find no
partition; so :func:`check_federation` stops the run at once with one line saying how to fix it.

:func:`ignored_settings` explains the run-config keys that do nothing in a run launched
this way: ``rounds`` in a one-shot FedCond run. (The comparison's settings, which only
``fedcond federate`` reads, are no keys of the app's run config: Flower refuses them.) The
in-process runner (``fedcond federate``) sizes its simulation from ``num-clients`` itself
and skips both.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

from fedcond.errors import FedcondError
from fedcond.federated.config import AppConfig

SIMULATION_SETTLE_SECONDS = 1.0  # the simulation registers all its SuperNodes within milliseconds of each other
SIMULATION_MAX_WAIT_SECONDS = 30.0
DEPLOYMENT_SETTLE_SECONDS = 10.0  # num-clients = 0 in a deployment: the SuperNodes connected, once none joins for 10 s
DEPLOYMENT_LOG_EVERY_SECONDS = 30.0


def is_simulation(grid: Any) -> bool:
    """Whether ``grid`` is the Simulation Engine's (virtual SuperNodes, all registered at start)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid)


def federation_size(grid: Any, cfg: AppConfig, log: Any = None, poll: float = 0.2) -> int:
    """How many SuperNodes the federation has.

    Simulation: Flower registers its virtual SuperNodes just after the ServerApp starts, so
    wait until some are there and their number holds still for a second. Deployment:
    SuperNodes connect when their operators start them, so wait (at most ``round_timeout``)
    until ``num_clients`` of them are connected, logging the count every 30 s; with
    ``num_clients`` 0 (the federation's size), until some are and none joins for 10 s.
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
    count, since = -1, start
    while True:
        now_count = len(list(grid.get_node_ids()))
        if now_count != count:
            count, since = now_count, time.monotonic()
        if cfg.num_clients and count >= cfg.num_clients or time.monotonic() - start >= cfg.round_timeout:
            return count
        if not cfg.num_clients and count > 0 and time.monotonic() - since >= DEPLOYMENT_SETTLE_SECONDS:
            return count
        if time.monotonic() - last_log >= DEPLOYMENT_LOG_EVERY_SECONDS:
            wanted = f"num-clients = {cfg.num_clients}" if cfg.num_clients else "the first"
            say(f"waiting for SuperNodes: {count} connected (waiting for {wanted})")
            last_log = time.monotonic()
        time.sleep(poll)


def check_federation(grid: Any, cfg: AppConfig, log: Any = None) -> int:
    """The federation's size, which must equal ``num-clients`` unless that is 0 (then it is
    the federation's size): a ``FedcondError`` saying how to make them agree otherwise."""
    size = federation_size(grid, cfg, log)
    if size > 0 and cfg.num_clients in (0, size):
        return size
    if size == 0:
        raise FedcondError("the federation has no SuperNode: start some (a local simulation starts 2, or "
                           "--federation-config \"num-supernodes=N\"), each with --node-config "
                           "\"partition-id=<0..N-1> num-partitions=N\" in a deployment")
    if is_simulation(grid):
        fix = (f"run `flwr run . --federation-config \"num-supernodes={cfg.num_clients}\"` "
               f"(or --run-config \"num-clients={size}\")")
    else:
        fix = (f"start exactly {cfg.num_clients} SuperNodes with --node-config "
               f"\"partition-id=<0..{cfg.num_clients - 1}> num-partitions={cfg.num_clients}\" "
               f"(or --run-config \"num-clients={size}\")")
    raise FedcondError(f"the federation has {size} SuperNode(s) but the run config says num-clients = "
                       f"{cfg.num_clients}: {fix}")


def ignored_settings(cfg: AppConfig) -> list[str]:
    """One sentence per run-config setting that does nothing in this run, when it differs
    from its default (pyproject.toml's defaults are AppConfig's, so a differing value
    is one the user set)."""
    defaults = {f.name: f.default for f in fields(AppConfig)}
    notes = []
    if cfg.effective_rounds == 1 and cfg.rounds != defaults["rounds"]:
        notes.append(f"rounds = {cfg.rounds} has no effect: one-shot FedCond runs exactly one round "
                     f"(mode = 'iterative', or strategy = 'fedcond-iterative', 'fedavg', 'fedprox' or 'fedadam', "
                     f"runs rounds)")
    return notes
