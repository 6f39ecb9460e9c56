"""The process-tree monitor: cheap samples every interval, PSS (costly) within its CPU budget."""

import time

import psutil

from fedcond.simulations import usage as usage_module
from fedcond.simulations.usage import TreeUsage


def test_pss_is_read_within_its_budget_while_rss_and_cpu_are_sampled_every_interval(monkeypatch):
    reads = {"rss": 0, "pss": 0}
    memory_info, full_info = psutil.Process.memory_info, psutil.Process.memory_full_info

    def counted_rss(self):
        reads["rss"] += 1
        return memory_info(self)

    def slow_pss(self):  # a reading as costly as on a tree of large processes
        reads["pss"] += 1
        time.sleep(0.02)
        return full_info(self)

    monkeypatch.setattr(psutil.Process, "memory_info", counted_rss)
    monkeypatch.setattr(psutil.Process, "memory_full_info", slow_pss)
    monkeypatch.setattr(usage_module, "PSS_BUDGET", 0.1)  # a reading of 0.02 s -> the next after 0.2 s
    with TreeUsage(every_s=0.01) as usage:
        time.sleep(0.5)
    assert reads["rss"] >= 15  # every interval
    # on entry, then at most one per 0.2 s, and on exit
    assert 2 <= reads["pss"] <= 5 and usage.pss_samples == reads["pss"]
    assert usage.pss_bytes > 0 and usage.rss_bytes > 0
    assert usage.to_json()["pss_samples"] == reads["pss"]


def test_a_system_that_refuses_pss_gives_none_and_stops_asking(monkeypatch):
    asked = []

    def refused(self):
        asked.append(1)
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_full_info", refused)
    with TreeUsage(every_s=0.01) as usage:
        time.sleep(0.1)
    assert usage.pss_bytes is None and len(asked) == 1 and usage.rss_bytes > 0
