"""A user's own Avalanche script: Avalanche's SplitMNIST and SimpleMLP, with the plugin added.

Nothing fedcond-specific but the plugin's arguments: Avalanche's benchmark (its own MNIST
loader and transforms), Avalanche's model, Avalanche's ``Naive`` strategy and metrics.
Compared at equal memory with Avalanche's own ``ReplayPlugin``::

    python benchmarks/continual_avalanche_user.py --data-dir /work/shared/data --mem-size 20 --seeds 0

Writes benchmarks/results/continual_avalanche_user.{json,md}; resumable (finished
(plugin, seed) cells are kept). ``--data-dir`` holds ``MNIST/raw/*.gz`` (the shared mirror);
they are unpacked once into a cache folder torchvision reads without downloading.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

from avalanche.benchmarks.classic import SplitMNIST  # noqa: E402
from avalanche.evaluation.metrics import accuracy_metrics  # noqa: E402
from avalanche.models import SimpleMLP  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin  # noqa: E402
from avalanche.training.supervised import Naive  # noqa: E402

from fedcond.continual.plugin import DistilledReplayPlugin  # noqa: E402
from fedcond.runinfo import run_record  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def mnist_root(data_dir: Path, cache: Path) -> Path:
    """A folder with MNIST/raw/ unpacked, as torchvision's MNIST(download=False) expects."""
    raw = cache / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in (data_dir / "MNIST" / "raw").glob("*.gz"):
        target = raw / gz.name[:-3]
        if not target.exists():
            with gzip.open(gz) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return cache


def run(plugin_name: str, mem: int, seed: int, root: Path, epochs: int, lr: float) -> dict:
    """Train SimpleMLP on SplitMNIST with one plugin; final average accuracy over experiences."""
    torch.manual_seed(seed)
    bench = SplitMNIST(n_experiences=5, seed=seed, dataset_root=str(root))
    model = SimpleMLP(num_classes=10)
    plugin = (DistilledReplayPlugin(mem_size=mem, seed=seed) if plugin_name == "distilled-replay"
              else ReplayPlugin(mem_size=mem))
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                     train_mb_size=32, train_epochs=epochs, plugins=[plugin], evaluator=evaluator)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True):  # Avalanche's own deprecation notices
        for exp in bench.train_stream:
            strategy.train(exp)
        metrics = strategy.eval(bench.test_stream)
    accs = [float(v) for k, v in metrics.items() if k.startswith("Top1_Acc_Exp/eval_phase/test_stream")]
    return {"plugin": plugin_name, "mem_size": mem, "seed": seed, "final_average_accuracy": statistics.fmean(accs),
            "experience_accuracies": accs, "wall_time_s": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=Path("runs/avalanche_mnist"))
    p.add_argument("--mem-size", type=int, default=20)
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = mnist_root(args.data_dir, args.cache)
    path = RESULTS / "continual_avalanche_user.json"
    saved = json.loads(path.read_text()) if path.exists() else {"runs": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in ("replay", "distilled-replay"):
            if any((r["plugin"], r["mem_size"], r["seed"]) == (name, args.mem_size, seed) for r in saved["runs"]):
                continue
            saved["runs"].append(run(name, args.mem_size, seed, root, args.epochs, args.lr))
            print(saved["runs"][-1], flush=True)
            record = run_record(torch.device("cpu"), args={k: str(v) for k, v in vars(args).items()})
            path.write_text(json.dumps({**saved, **record}, indent=1) + "\n")
    if path.exists():
        saved = json.loads(path.read_text())  # with the run record (command, device, versions)
    lines = [
        "# A user's Avalanche script: SplitMNIST + SimpleMLP + Naive, plugin added",
        "",
        f"Command: `{saved.get('command', '')}`",
        "",
        f"Device: {saved.get('device_name', '')}; versions {saved.get('versions', '')}",
        "",
        "| plugin | memory | seeds | final avg acc (mean ± std) |",
        "|---|---|---|---|",
    ]
    groups: dict = {}
    for r in saved["runs"]:
        groups.setdefault((r["plugin"], r["mem_size"]), []).append(r["final_average_accuracy"])
    for (name, mem), accs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {name} | {mem} | {len(accs)} | {statistics.fmean(accs):.3f} ± {std:.3f} |")
    (RESULTS / "continual_avalanche_user.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
