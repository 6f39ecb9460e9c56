"""Scale benchmark: 10, 100 and 1,000 simulated clients on MNIST (issue 15).

Two cells per number of clients, each a ``fedcond federate`` run through Flower's
Simulation Engine (the same ClientApp and ServerApp), Dirichlet(0.5) partitions, seed 0:

- ``fedcond_<n>``: one-shot FedCond, DM at IPC 1 with 20 iterations per client;
- ``fedavg_<n>``: one FedAvg round with 10 % of the clients sampled.

Optional (``--strategies``): ``fedcond-batched_<n>``: the same clients' DM work without
Flower, batched ``--group-size`` clients at a time in this process on ``--device``
(``DM.distill_many``, :mod:`fedcond.distill.dm_batch`: stacked networks; clients grouped by size); and
``fedcond-alone_<n>``: the same one client at a time in this process. Together they say
whether batching pays on the device (on the 2-core CPU it does not for MNIST).

Per cell: wall time of the whole run (Ray start, data, initial and final evaluation on the
10,000 test images, the server's work), the clients' part of the round (sending to the
last reply: ``clients_seconds``), clients per second over it and over the steady stream
of replies, and the peak memory of all processes together (this one and Ray's workers;
RSS summed, and PSS, which counts a shared page once). The machine's load average is
recorded before and after each cell: on a shared machine it says what the numbers mean,
and the CPU seconds of all processes (total, and per client over the steady stream of
replies, read at every reply) say what the work cost whatever the others were doing.

The server trains on the pooled sets for ``--server-epochs`` (default 1, not the
federate default of 150): its cost grows with the pool (1,000 clients at IPC 1 pool about
6,000 images, and 150 epochs of that are hours of CPU), which is the server's training
recipe, not the cost of simulating clients; the cell records the server's seconds apart.

Cells are resumable: finished cells are read back from ``--out``'s JSON; a cell stopped
by ``--cell-timeout`` is recorded as partial (clients finished, their rate, the
extrapolated time for all) and is rerun only with ``--retry-partial``. Results go to
``--out``/``scale_<dataset><tag>.{json,md}`` after every cell, with the command, machine
and versions.

The CPU run (2 cores)::

    nice -n 10 python benchmarks/scale_benchmark.py --data-dir /work/shared/data

The cells run in ``--precision`` (default ``auto``: bfloat16 where the hardware has fast
bfloat16, AMX CPUs and CUDA GPUs; float32 on a CPU without AMX), recorded per cell; before
the FedCond cell the ConvNet's images per second are measured (one thread) to state the
round's floor, DM's real-image embedding alone. The FedCond cells in bfloat16 whatever
the hardware (``-o real_precision=bfloat16``, the earlier spelling, does the same)::

    python benchmarks/scale_benchmark.py --data-dir /work/shared/data --strategies fedcond \
        --precision bfloat16 --tag _bf16

On a GPU, the same plus 10,000 clients, eight clients sharing the GPU at a time, and the
batched path beside the one-client-at-a-time one::

    python benchmarks/scale_benchmark.py --data-dir DATA --device cuda --client-gpus 0.125 \\
        --client-cpus 1 --clients 10,100,1000,10000 --tag _gpu \\
        --strategies fedcond,fedavg,fedcond-batched,fedcond-alone --group-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcond.federated.config import FederateConfig
from fedcond.runinfo import device_description, package_versions, write_json


class CellTimeout(Exception):
    """Raised from the event callback to stop a cell that ran past ``--cell-timeout``."""


def cell_config(args: argparse.Namespace, strategy: str, n: int) -> FederateConfig:
    common = dict(dataset=args.dataset, data_dir=args.data_dir or "", num_clients=n, partition="dirichlet",
                  alpha=0.5, seed=0, strategy=strategy, strategies=strategy, storage_dtypes="float32",
                  random_reference=False, device=args.device, server_epochs=args.server_epochs,
                  precision=args.precision)
    if args.cell_timeout > 0:  # the server stops waiting for replies then (and so never hangs)
        common["round_timeout"] = args.cell_timeout
    if strategy.startswith("fedcond"):
        return FederateConfig(**{**common, "strategy": "fedcond", "strategies": "fedcond"}, method="dm", ipc=1,
                              iterations=20, method_options=args.method_options)
    return FederateConfig(**common, rounds=1, fraction=0.1)


def embedding_floor(cfg: FederateConfig, reps: int = 5) -> dict[str, Any]:
    """The floor of a one-shot FedCond round on this CPU: the real images DM embeds (per client,
    iteration and class, ``min(batch_real, class size)``: at MNIST's ~60 images a client, every
    image every iteration) at the ConvNet's measured images per second, one per core.

    The speed is measured here, one thread, on the clients' own pass (DM's embedding: fresh
    networks as DM builds them for the run's precision, chunks as DM's); best of ``reps``.
    """
    import torch

    from fedcond.distill.dm import DMConfig
    from fedcond.distill.matching import embedding_chunk
    from fedcond.federated.data_cache import federated_data
    from fedcond.federated.partition import run_partitions
    from fedcond.models import get_model
    from fedcond.precision import DTYPES

    data = federated_data(cfg)
    parts = run_partitions(cfg)
    _, config = cfg.distill_config()
    batch_real = int(getattr(config, "batch_real", DMConfig.batch_real))
    labels = data.train_labels.cpu()
    per_iteration = sum(int(torch.bincount(labels[p], minlength=data.num_classes).clamp(max=batch_real).sum())
                        for p in parts)
    precision = cfg.resolved_precision()
    dtype = DTYPES[precision]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    c, h, w = data.image_shape
    x = data.train_images[:512].cpu()
    chunk = embedding_chunk(torch.device("cpu"), dtype) or 512
    best = float("inf")
    for _ in range(reps):
        net = get_model(cfg.model, c, data.num_classes, (h, w)).requires_grad_(False)
        if dtype == torch.bfloat16:
            net = net.to(memory_format=torch.channels_last)  # as DM builds its networks in bfloat16
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            for i in range(0, x.shape[0], chunk):
                net.embed(x[i : i + chunk])
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(threads)
    speed = x.shape[0] / best
    cores = os.cpu_count() or 1
    images = per_iteration * cfg.iterations
    return {"precision": precision, "images_embedded": images, "images_per_second_one_thread": speed,
            "cores": cores, "floor_seconds": images / (speed * cores)}


def run_in_process(args: argparse.Namespace, cfg: FederateConfig, batched: bool) -> dict[str, Any]:
    """The clients' DM work of a one-shot FedCond round in this process, without Flower:
    ``batched`` groups of ``--group-size`` clients of similar size (``distill_many``), or one
    client at a time (``DM().distill``, as each ClientApp does). Seeds as the ClientApp's."""
    import torch

    from fedcond.distill import get_distiller
    from fedcond.federated.client_training import client_seed, distill_partition
    from fedcond.federated.data_cache import federated_data
    from fedcond.federated.partition import run_partitions
    from fedcond.simulations.usage import TreeUsage

    torch.set_num_threads(max(1, cfg.client_threads))  # as the ClientApp does
    load_before = os.getloadavg()
    start = time.perf_counter()
    with TreeUsage() as usage:
        data = federated_data(cfg)
        parts = run_partitions(cfg)
        setup = time.perf_counter() - start
        seed = [client_seed(cfg, pid, server_round=1) for pid in range(cfg.num_clients)]
        deadline = start + args.cell_timeout if args.cell_timeout > 0 else None
        done, timed_out = 0, False
        work_start = time.perf_counter()
        if batched:
            _, config = cfg.distill_config()
            order = sorted(range(cfg.num_clients), key=lambda pid: len(parts[pid]))
            for i in range(0, len(order), args.group_size):
                group = order[i : i + args.group_size]
                clients = [data.subset(parts[pid], name=cfg.dataset) for pid in group]
                generators = [torch.Generator().manual_seed(seed[pid]) for pid in group]
                get_distiller("dm").distill_many(clients, config, generators, torch.device(cfg.device))
                done += len(group)
                if deadline is not None and time.perf_counter() > deadline:
                    timed_out = True
                    break
        else:
            for pid in range(cfg.num_clients):
                distill_partition(data.subset(parts[pid], name=cfg.dataset), cfg, seed=seed[pid])
                done += 1
                if deadline is not None and time.perf_counter() > deadline:
                    timed_out = True
                    break
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        work = time.perf_counter() - work_start
    return {"strategy": "fedcond-batched" if batched else "fedcond-alone", "num_clients": cfg.num_clients,
            "status": "partial" if timed_out else "finished", "clients_sampled": cfg.num_clients,
            "clients_finished": done, "wall_seconds": time.perf_counter() - start, "setup_seconds": setup,
            "clients_seconds": work, "clients_per_second": done / work if work > 0 else None,
            "group_size": args.group_size if batched else 1, "threads": torch.get_num_threads(),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "peak_memory": usage.to_json(), "cpu_seconds": usage.cpu_seconds(),
            "cpu_seconds_per_client": usage.cpu_seconds() / done if done else None, "config": cfg.to_json()}


def start_ray(resources: dict[str, Any], attempts: int = 5) -> None:
    """Start Ray here before Flower does (Flower then uses it, and shuts it down after the
    run), retrying: on a loaded machine Ray's raylet can miss its 30 s start-up deadline,
    and a simulation whose Ray failed to start leaves the server waiting for replies."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(**resources["init_args"])
            return
        except Exception as err:  # noqa: BLE001  (Ray raises a bare Exception for this)
            print(f"  Ray did not start (attempt {attempt}/{attempts}): {err}", flush=True)
            ray.shutdown()
            time.sleep(10)
    raise RuntimeError(f"Ray did not start in {attempts} attempts")


def run_cell(args: argparse.Namespace, cfg: FederateConfig, folder: Path) -> dict[str, Any]:
    """One cell; returns its summary (partial if stopped by the timeout)."""
    from fedcond.federated.events import ClientReplied, RoundFinished
    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config
    from fedcond.simulations.usage import TreeUsage

    if folder.exists():
        shutil.rmtree(folder)  # a cell is measured from scratch, never resumed mid-run
    replies: list[tuple[float, int, int, float]] = []  # (seconds since start, replied, sampled, CPU seconds)
    start = time.perf_counter()
    deadline = start + args.cell_timeout if args.cell_timeout > 0 else None
    round_done: list[float] = []

    def on_event(event: Any) -> None:
        now = time.perf_counter() - start
        if isinstance(event, ClientReplied):
            replies.append((now, event.replied, event.sampled, usage.cpu_seconds(refresh=True)))
            if event.replied % max(1, event.sampled // 20) == 0:
                print(f"  {cfg.strategy} {cfg.num_clients}: {event.replied}/{event.sampled} clients, {now:.0f} s",
                      flush=True)
        elif isinstance(event, RoundFinished):
            round_done.append(now)
        if deadline is not None and time.perf_counter() > deadline:
            raise CellTimeout(f"stopped after {args.cell_timeout:.0f} s")

    load_before = os.getloadavg()
    resources = backend_config(args.client_cpus, args.client_gpus)
    status, result = "finished", None
    with TreeUsage() as usage:
        start_ray(resources)
        try:
            result = run_experiment(cfg, [cfg.strategy], folder, resources, reference="none", on_event=on_event)
        except CellTimeout:
            status = "partial"
        except Exception as err:
            if "CellTimeout" not in repr(err) and not (deadline and time.perf_counter() > deadline):
                raise
            status = "partial"
    wall = time.perf_counter() - start
    sampled = replies[-1][2] if replies else None
    done = replies[-1][1] if replies else 0
    out: dict[str, Any] = {"strategy": cfg.strategy, "num_clients": cfg.num_clients, "status": status,
                           "clients_sampled": sampled, "clients_finished": done, "wall_seconds": wall,
                           "load_average_before": load_before, "load_average_after": os.getloadavg(),
                           "peak_memory": usage.to_json(), "cpu_seconds": usage.cpu_seconds(),
                           "config": cfg.to_json()}
    if len(replies) >= 2 and replies[-1][0] > replies[0][0]:
        # the steady stream: replies after the first (which also paid the workers' start-up)
        first, final = replies[0], replies[-1]
        out["steady_clients_per_second"] = (final[1] - first[1]) / (final[0] - first[0])
        out["cpu_seconds_per_client"] = (final[3] - first[3]) / (final[1] - first[1])
        out["first_reply_seconds"] = first[0]
        out["cpu_seconds_to_first_reply"] = first[3]
    if result is not None and done < (sampled or 1):
        status = "partial"  # the round timed out with replies missing
    if result is not None:
        run = result["runs"][0]
        rnd = run["rounds"][-1]
        out.update(final_accuracy=run["final_accuracy"], upload_bytes=run["upload_bytes"],
                   clients_seconds=rnd["clients_seconds"], round_seconds=rnd["seconds"],
                   simulation_wall_seconds=run["wall_seconds"],
                   clients_per_second=(sampled or 0) / rnd["clients_seconds"] if rnd["clients_seconds"] else None,
                   server_seconds_after_clients=(round_done[-1] - replies[-1][0]) if round_done and replies else None)
    if status == "partial" and "steady_clients_per_second" in out and sampled:
        out["extrapolated_clients_seconds"] = (
            out["first_reply_seconds"] + (sampled - 1) / out["steady_clients_per_second"]
        )
    return out


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.2f}" if n else "-"


def _s(x: float | None) -> str:
    return f"{x:.0f}" if x is not None else "-"


def _f2(x: float | None) -> str:
    return f"{x:.2f}" if x else "-"


def write_report(path: Path, report: dict[str, Any]) -> None:
    write_json(path.with_suffix(".json"), report)
    lines = [f"# Scale: simulated clients on {report['dataset']}", "",
             "Commands (every cell resumes; a finished cell is kept): "
             + ", ".join(f"`{c}`" for c in dict.fromkeys(
                 cell.get("command", report["command"]) for cell in report["cells"].values()
             ) or [report["command"]]), "",
             f"Machine: {report['machine']}; versions: "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v), "",
             "One-shot FedCond: DM, IPC 1, 20 iterations per client; FedAvg: one round, 10 % of the clients sampled. "
             f"Dirichlet(0.5), seed 0, server epochs {report['server_epochs']}. Wall: the whole run (Ray start, data, "
             "initial and final test evaluation, server). Clients s: sending the round to its last reply "
             "(fedcond-batched / fedcond-alone: the clients' DM work in one process, without Flower). Memory: all "
             "processes together (this one and Ray's workers), peak of the sum of RSS (shared pages counted per "
             "process) and of PSS (counted once). Load: the 1-minute load average before / after the cell.", "",
             "| cell | sampled | finished | wall s | clients s | clients/s | steady clients/s | CPU s per client | "
             "CPU s all | server s | peak RSS GiB | peak PSS GiB | load | status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, c in report["cells"].items():
        mem = c["peak_memory"]
        cps = c.get("clients_per_second")
        steady = c.get("steady_clients_per_second")
        status = c["status"]
        if status == "partial" and c.get("extrapolated_clients_seconds"):
            status += (
                f" (all {c['clients_sampled']}: ~{c['extrapolated_clients_seconds'] / 60:.0f} min at the steady rate)"
            )
        lines.append(f"| {name} | {c['clients_sampled']} | {c['clients_finished']} | {_s(c['wall_seconds'])} | "
                     f"{_s(c.get('clients_seconds'))} | {f'{cps:.2f}' if cps else '-'} | "
                     f"{f'{steady:.2f}' if steady else '-'} | "
                     f"{_f2(c.get('cpu_seconds_per_client'))} | "
                     f"{_s(c.get('cpu_seconds'))} | {_s(c.get('server_seconds_after_clients'))} | "
                     f"{_gib(mem['rss_bytes'])} | {_gib(mem['pss_bytes'])} | "
                     f"{c['load_average_before'][0]:.1f} / {c['load_average_after'][0]:.1f} | {status} |")
    for name, c in report["cells"].items():
        floor = c.get("embedding_floor")
        if floor:
            lines += ["", f"{name} ({c.get('precision')}): the floor, DM's real-image embedding alone, is "
                      f"{floor['images_embedded']:,} images at {floor['images_per_second_one_thread']:.0f} images/s "
                      f"per core (measured before the cell, one thread) on {floor['cores']} cores = "
                      f"{floor['floor_seconds']:.0f} s; the clients took {_s(c.get('clients_seconds'))} s, the whole "
                      f"run {_s(c['wall_seconds'])} s."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--clients", default="10,100,1000", help="comma list of numbers of clients")
    parser.add_argument("--strategies", default="fedcond,fedavg",
                        help="comma list: fedcond, fedavg, fedcond-batched, fedcond-alone")
    parser.add_argument("--group-size", type=int, default=64, help="fedcond-batched: clients per batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--client-cpus", type=float, default=1.0)
    parser.add_argument("--client-gpus", type=float, default=0.0)
    parser.add_argument("--server-epochs", type=int, default=1)
    parser.add_argument("--cell-timeout", type=float, default=25 * 60, help="seconds per cell (0: none)")
    parser.add_argument("--retry-partial", action="store_true", help="rerun cells recorded as partial")
    parser.add_argument("--scratch", default="runs/scale", help="the cells' run folders")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--tag", default="", help="suffix of the results files, e.g. _gpu")
    parser.add_argument("--precision", default=FederateConfig.precision,
                        help="auto (default), float32 or bfloat16 (fedcond.precision)")
    parser.add_argument("--method-options", default="",
                        help='FedCond cells: DM options as JSON (fedcond federate -o), e.g. \'{"real_precision": '
                             '"bfloat16"}\'; give the cells their own --tag')
    args = parser.parse_args(argv)

    import torch

    path = Path(args.out) / f"scale_{args.dataset}{args.tag}.json"
    report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    report.update(dataset=args.dataset, server_epochs=args.server_epochs,
                  command="python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                  machine=device_description(torch.device(args.device)), versions=package_versions())
    cells: dict[str, Any] = report.setdefault("cells", {})
    sizes = [int(n) for n in args.clients.split(",")]
    strategies = [s.strip() for s in args.strategies.split(",")]
    order = [(s, n) for n in sizes for s in strategies]
    for strategy, n in order:
        name = f"{strategy}_{n}"
        if name in cells and (cells[name]["status"] == "finished" or not args.retry_partial):
            print(f"{name}: {cells[name]['status']} before, kept", flush=True)
            continue
        print(f"{name}: running (load {os.getloadavg()[0]:.1f})", flush=True)
        cfg = cell_config(args, strategy, n)
        if strategy in ("fedcond-batched", "fedcond-alone"):
            cells[name] = run_in_process(args, cfg, batched=strategy == "fedcond-batched")
        else:
            floor = embedding_floor(cfg) if strategy == "fedcond" and args.device == "cpu" else None
            cells[name] = run_cell(args, cfg, Path(args.scratch) / name)
            if floor is not None:
                cells[name]["embedding_floor"] = floor
        cells[name]["precision"] = cfg.resolved_precision()
        c = cells[name]
        c["command"] = report["command"]  # several invocations fill one report; each cell keeps its own
        print(f"{name}: {c['status']}, wall {c['wall_seconds']:.0f} s, clients {_s(c.get('clients_seconds'))} s, "
              f"peak RSS {_gib(c['peak_memory']['rss_bytes'])} GiB", flush=True)
        write_report(path, report)
    write_report(path, report)
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
