"""What a simulation costs the machine: peak memory and CPU time of the whole process tree.

A Flower simulation runs its clients in Ray worker processes, so the driver's own figures
(``ru_maxrss``, its CPU time) say little. :class:`TreeUsage` samples this process and every
process it started in a background thread:

- ``rss_bytes``: the largest sum of resident memory seen (pages shared between processes,
  such as the libraries every worker maps, count once per process: an upper bound);
- ``pss_bytes``: the largest sum of proportional set sizes (a shared page split among its
  sharers: the machine's memory these processes use together), where the system reports it;
- ``main_rss_bytes``: this process's own peak resident memory;
- :meth:`TreeUsage.cpu_seconds`: user + system CPU time of the tree since the start (a
  process that exited counts with its last sample). On a shared machine wall time says
  how busy the others were; CPU seconds say what the work cost.

A spike shorter than the sampling interval can be missed; the interval is recorded.

Reading PSS makes the kernel walk every page of every process (``smaps_rollup``): with ten
simulation processes of a gigabyte each, a sample costs a good part of a second, and the
nested monitors of a scale run (benchmark, experiment, run) sampling every 0.5 s took much
of the server process's CPU, taken from the clients on a 2-core machine. So RSS and CPU
times (cheap) are read every interval, PSS only as often as keeps its reading within
``PSS_BUDGET`` of one core; ``pss_samples`` says how many were taken.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from typing import Any

PSS_BUDGET = 0.02  # share of one core a monitor may spend reading PSS


class TreeUsage:
    """Context manager: samples the process tree every ``every_s`` seconds while open."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.rss_bytes = 0
        self.pss_bytes: int | None = None
        self.processes = 0
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at its last sample
        self._cpu_start = 0.0
        self._next_pss = 0.0  # time.monotonic() from which the next PSS reading is due
        self._pss_readable = True  # False once the system refused a PSS reading
        self.pss_samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "TreeUsage":
        import psutil  # Ray depends on it

        self._root = psutil.Process()
        self._gone = psutil.NoSuchProcess
        times = self._root.cpu_times()
        self._cpu_start = times.user + times.system  # this process's CPU before the block
        self.sample()
        self._thread = threading.Thread(target=self._watch, name="fedcond-tree-usage", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample(pss=time.monotonic() >= self._next_pss)

    def sample(self, pss: bool = True) -> None:
        """Add one sample of the tree (a process that exits meanwhile is skipped); ``pss``:
        read the proportional set sizes too (costly, see the module docstring)."""
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except Exception:  # noqa: BLE001  (psutil.Error subclasses; the tree changed under us)
            return
        rss, count, cpu, alive = 0, 0, {}, []
        for proc in procs:
            try:
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu[proc.pid] = times.user + times.system
                count += 1
                alive.append(proc)
            except Exception:  # noqa: BLE001  (psutil raises several unrelated types for a process that vanished)
                continue
        pss_known = pss and self._pss_readable
        if pss_known:
            started, total = time.perf_counter(), 0
            for proc in alive:
                try:
                    total += proc.memory_full_info().pss
                except self._gone:  # exited since it was listed
                    continue
                except Exception:  # noqa: BLE001  (no smaps here, or no permission)
                    pss_known = self._pss_readable = False
                    break
            self._next_pss = time.monotonic() + (time.perf_counter() - started) / PSS_BUDGET
        with self._lock:
            self._cpu.update(cpu)
            if rss > self.rss_bytes:
                self.rss_bytes, self.processes = rss, count
            if pss_known:
                self.pss_bytes = max(self.pss_bytes or 0, total)
                self.pss_samples += 1

    def cpu_seconds(self, refresh: bool = False) -> float:
        """CPU seconds (user + system) of the tree since the block began; ``refresh``: read
        the processes' CPU times now (cheap: no memory sample)."""
        if refresh:
            cpu = {}
            try:
                for proc in [self._root, *self._root.children(recursive=True)]:
                    try:
                        times = proc.cpu_times()
                        cpu[proc.pid] = times.user + times.system
                    except Exception:  # noqa: BLE001  (exited meanwhile)
                        continue
            except Exception:  # noqa: BLE001  (psutil raises several unrelated types for a process that vanished)
                pass
            with self._lock:
                self._cpu.update(cpu)
        with self._lock:
            return sum(self._cpu.values()) - self._cpu_start

    def to_json(self) -> dict[str, Any]:
        """The memory peaks for results.json (``peak_memory``)."""
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"rss_bytes": self.rss_bytes, "pss_bytes": self.pss_bytes, "processes_at_peak": self.processes,
                "main_rss_bytes": int(own if sys.platform == "darwin" else own * 1024),
                "sample_seconds": self.every_s, "pss_samples": self.pss_samples}
