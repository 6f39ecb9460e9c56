"""What a federated comparison reports while it runs: typed events for a progress display.

The runner and the ServerApp call one ``on_event`` callable with these; the CLI turns them
into a progress bar and one line per round (``fedcond.commands.federate``), a test may
raise from it to stop a run at a chosen point. ``ClientReplied`` and ``RoundFinished``
come from the ServerApp's thread, the others from the runner's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union


@dataclass(frozen=True)
class RunStarted:
    """A run (strategy or reference) begins; ``first_round`` > 1 when it resumes."""

    name: str
    num_rounds: int
    num_clients: int
    first_round: int = 1


@dataclass(frozen=True)
class ClientReplied:
    """One sampled client's reply (or error) arrived in ``server_round``."""

    name: str
    server_round: int
    replied: int  # replies so far this round
    sampled: int
    ok: bool


@dataclass(frozen=True)
class RoundFinished:
    """A round is aggregated, evaluated and checkpointed."""

    name: str
    server_round: int
    num_rounds: int
    accuracy: float | None
    upload_bytes: int  # cumulative, all clients
    download_bytes: int
    clients_ok: int
    clients_lost: int
    seconds: float


@dataclass(frozen=True)
class RunFinished:
    """A run ended; ``record`` is its results.json entry; ``from_checkpoint`` if it was not rerun."""

    name: str
    record: dict[str, Any]
    from_checkpoint: bool = False


@dataclass(frozen=True)
class ReferenceProgress:
    """The centralised reference at work (from the runner's thread): ``phase`` is
    ``"upper bound"`` (an epoch of training to a plateau, ``step`` of at most ``total``)
    or ``"distill"`` (the method run centrally: an iteration of ``total``)."""

    phase: str
    step: int
    total: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class ReferenceFinished:
    """The centralised reference is known; ``from_checkpoint`` when it was read back, not
    recomputed (its inputs had not changed)."""

    reference: dict[str, Any]
    from_checkpoint: bool = False


Event = Union[RunStarted, ClientReplied, RoundFinished, RunFinished, ReferenceProgress, ReferenceFinished]
OnEvent = Callable[[Event], None]
