"""Peak memory of a simulation: this process and every process it started, together.

A Flower simulation runs its clients in Ray worker processes, so the driver's own peak
(``ru_maxrss``) says little. :class:`PeakMemory` samples the process tree in a background
thread and keeps the largest total seen:

- ``rss_bytes``: resident memory summed over the processes (pages shared between them,
  such as the libraries every worker maps, count once per process: an upper bound);
- ``pss_bytes``: proportional set size summed (a shared page split among its sharers: the
  machine's memory these processes use together), where the system reports it;
- ``main_rss_bytes``: this process's own peak resident memory.

A spike shorter than the sampling interval can be missed; the interval is recorded.
"""

from __future__ import annotations

import resource
import sys
import threading
from typing import Any


class PeakMemory:
    """Context manager: samples the process tree every ``every_s`` seconds while open."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.rss_bytes = 0
        self.pss_bytes: int | None = None
        self.processes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        import psutil  # noqa: PLC0415  (Ray depends on it)

        self._root = psutil.Process()
        self.sample()
        self._thread = threading.Thread(target=self._watch, name="fedcond-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        """Add one sample of the tree (a process that exits meanwhile is skipped)."""
        rss, pss, count, pss_known = 0, 0, 0, True
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except Exception:  # noqa: BLE001  (psutil.Error subclasses; the tree changed under us)
            return
        for proc in procs:
            try:
                rss += proc.memory_info().rss
                count += 1
            except Exception:  # noqa: BLE001
                continue
            if pss_known:
                try:
                    pss += proc.memory_full_info().pss
                except Exception:  # noqa: BLE001  (no smaps here, or no permission)
                    pss_known = False
        if rss > self.rss_bytes:
            self.rss_bytes, self.processes = rss, count
        if pss_known:
            self.pss_bytes = max(self.pss_bytes or 0, pss)

    def to_json(self) -> dict[str, Any]:
        """The peaks for results.json."""
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"rss_bytes": self.rss_bytes, "pss_bytes": self.pss_bytes, "processes_at_peak": self.processes,
                "main_rss_bytes": int(own if sys.platform == "darwin" else own * 1024),
                "sample_seconds": self.every_s}
