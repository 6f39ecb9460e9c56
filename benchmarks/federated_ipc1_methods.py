"""Which client-side method earns its bytes at IPC 1? Pooled sets of 10 Dirichlet clients.

    python benchmarks/federated_ipc1_methods.py --dataset digits --seeds 0,1 \\
        --methods random,dm,dsa,frepo,stratified-dm,allocated-random,allocated-dm

The question of issue 12: at equal upload bytes, does a distilled image per class per client
beat a random real one? Flower adds nothing to that question, so this script does what a
one-shot FedCond round does without it — partition (flwr-datasets' Dirichlet, as
``fedcond federate``), each client condenses its partition, the server pools the sets and
trains a fresh ConvNet on them (300 epochs, SGD lr 0.01, with and without the server's
augmentation) — and tests on the real test split. Every method sends the same number of
images, so the same bytes at any storage dtype.

Methods: any registered distiller at IPC 1 (``random`` is the random-real reference); a
suffix ``@f<k>`` stores each image as a k x k mosaic of smaller ones (multi-formation,
:mod:`fedcond.formation`; ``dm@f2``, and ``random@f2`` its random-real reference); and
a suffix ``+t<n>`` (after any ``@f<k>``: ``dm@f2+t4``) matches in ``n`` networks trained
briefly on the client's data besides DM's fresh random one (IDM's model sampling, DM's
``trained_networks`` option); and two attempts at making ten clients' images less alike than ten class means:

- ``stratified-<m>``: client k distils only the k-th of K equal slices of each class, the
  slices cut along one random direction in the feature space of one random ConvNet, both
  drawn from a seed every client knows — a shared convention, no extra communication;
- ``allocated-<m>``: a client's budget (one image per class it holds) goes to its classes
  in proportion to how many images of each it holds, distilled jointly per class, so a
  class a client holds much of gets several images that spread over it.

Writes ``federated_ipc1_methods_<dataset>_alpha<alpha>.{json,md}`` into ``--out`` after every cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcond.augment import DSA
from fedcond.data import ImageDataset, load_dataset
from fedcond.distill import get_distiller
from fedcond.federated.partition import partition_indices
from fedcond.federated.server_training import pool_sets
from fedcond.models import get_model
from fedcond.runinfo import device_description, package_versions
from fedcond.synthetic import SyntheticSet
from fedcond.train import accuracy, train_model


def distill(data: ImageDataset, method: str, ipc: int, iterative: dict, generator: torch.Generator) -> SyntheticSet:
    """``method`` at ``ipc`` on ``data`` (iterative methods with the ``iterative`` options)."""
    method, _, trained = method.partition("+t")  # "dm+t4": 4 trained networks beside the fresh one
    method, _, factor = method.partition("@f")  # "dm@f2": multi-formation, factor 2
    distiller = get_distiller(method)
    options: dict = {"ipc": ipc}
    if factor:
        options["factor"] = int(factor)
    if trained:
        options["trained_networks"] = int(trained)
    if "iterations" in distiller.config_class.__dataclass_fields__:
        options.update(iterative)
    return distiller.distill(data, distiller.config_class(**options), generator)


def stratum(data: ImageDataset, k: int, num_clients: int, shared_seed: int = 12345) -> ImageDataset:
    """Client ``k``'s slice of each class along a direction every client draws alike."""
    c, h, w = data.image_shape
    net = get_model("convnet", c, data.num_classes, (h, w), seed=shared_seed)
    with torch.no_grad():
        feats = net.embed(data.train_images)
    direction = torch.randn(feats.shape[1], generator=torch.Generator().manual_seed(shared_seed))
    proj = feats @ direction
    keep = []
    for label in data.train_labels.unique():
        idx = torch.nonzero(data.train_labels == label).flatten()
        order, n = idx[torch.argsort(proj[idx])], idx.numel()
        lo = (k * n) // num_clients
        keep.append(order[lo:max(lo + 1, ((k + 1) * n) // num_clients)])
    return data.subset(torch.cat(keep))


def allocation(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class: one per class held, redistributed in proportion to the class counts."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    budget = int((counts > 0).sum())
    share = counts / counts.sum() * budget
    alloc = share.floor().long()
    alloc[torch.argsort(share - alloc, descending=True)[: budget - int(alloc.sum())]] += 1
    return torch.minimum(alloc, counts.long())


def client_sets(part: ImageDataset, method: str, k: int, num_clients: int, iterative: dict,
                generator: torch.Generator) -> list[SyntheticSet]:
    """What client ``k`` uploads under ``method`` (see the module docstring)."""
    if method.startswith("stratified-"):
        return [distill(stratum(part, k, num_clients), method.removeprefix("stratified-"), 1, iterative, generator)]
    if method.startswith("allocated-"):
        alloc = allocation(part.train_labels, part.num_classes)
        sets = []
        for quota in sorted(set(alloc.tolist()) - {0}):
            classes = torch.nonzero(alloc == quota).flatten()
            idx = torch.nonzero(torch.isin(part.train_labels, classes)).flatten()
            sets.append(distill(part.subset(idx), method.removeprefix("allocated-"), quota, iterative, generator))
        return sets
    return [distill(part, method, 1, iterative, generator)]


def evaluate_pool(data: ImageDataset, sets: list[SyntheticSet], augment: bool, runs: int, epochs: int) -> list[float]:
    """Test accuracy of fresh ConvNets trained on the pooled sets (one per run seed)."""
    images, labels = pool_sets(sets)  # what the FedCond server trains on (mosaics decoded)
    c, h, w = data.image_shape
    accs = []
    for run in range(runs):
        model = get_model("convnet", c, data.num_classes, (h, w), seed=run)
        train_model(
            model,
            images,
            labels,
            epochs,
            lr=0.01,
            generator=torch.Generator().manual_seed(run),
            augment=DSA("crop_scale_rotate" if c == 1 else "color_crop_cutout_flip_scale_rotate") if augment else None,
        )
        accs.append(accuracy(model, data.test_images, data.test_labels))
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--methods", default="random,dm,dsa,frepo,stratified-dm,allocated-random,allocated-dm")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batch-real", type=int, default=256, help="real images per class per iteration")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--runs", type=int, default=2, help="server models per pool")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = load_dataset(args.dataset, args.data_dir)
    stem = args.out / f"federated_ipc1_methods_{args.dataset}_alpha{args.alpha}"  # no suffix: alpha has a dot
    json_path = Path(f"{stem}.json")
    done = json.loads(json_path.read_text())["cells"] if json_path.exists() else []
    report = {"command": " ".join(["python", *sys.argv]), "machine": device_description(torch.device("cpu")),
              "versions": package_versions(), "cells": done}
    for seed in [int(s) for s in args.seeds.split(",")]:
        parts = partition_indices(data.train_labels, args.num_clients, "dirichlet", args.alpha, 2, seed)
        for method in args.methods.split(","):
            if any(c["method"] == method and c["seed"] == seed for c in report["cells"]):
                continue
            start = time.perf_counter()
            sets = []
            for k, part in enumerate(parts):
                iterative = {"iterations": args.iterations, "batch_real": args.batch_real}
                sets += client_sets(data.subset(torch.as_tensor(part)), method, k, args.num_clients, iterative,
                                    torch.Generator().manual_seed(seed * 100 + k))
            seconds = time.perf_counter() - start
            cell = {
                "method": method,
                "seed": seed,
                "images": sum(s.num_images for s in sets),
                "client_seconds": seconds,
                "accuracy_plain": evaluate_pool(data, sets, False, args.runs, args.epochs),
                "accuracy_augmented": evaluate_pool(data, sets, True, args.runs, args.epochs),
            }
            report["cells"].append(cell)
            print(
                f"seed {seed} {method:18s} {cell['images']} images: plain "
                f"{statistics.mean(cell['accuracy_plain']):.4f}, "
                f"augmented {statistics.mean(cell['accuracy_augmented']):.4f} ({seconds:.0f} s of clients)",
                flush=True,
            )
            write(report, stem, args)
    write(report, stem, args)  # also when every cell was done: the command then lists them all


def write(report: dict, stem: Path, args: argparse.Namespace) -> None:
    """The JSON (every cell) and a markdown table (mean over seeds and server runs)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"# IPC 1 per client, {args.num_clients} Dirichlet-{args.alpha} clients, {args.dataset}: pooled sets",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}",
        "",
        "| method | seeds | images | server trains plain | server augments | client s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method in dict.fromkeys(c["method"] for c in report["cells"]):
        cells = [c for c in report["cells"] if c["method"] == method]
        plain = [a for c in cells for a in c["accuracy_plain"]]
        aug = [a for c in cells for a in c["accuracy_augmented"]]
        lines.append(f"| {method} | {len(cells)} | {statistics.mean(c['images'] for c in cells):.0f} | "
                     f"{statistics.mean(plain):.4f} | {statistics.mean(aug):.4f} | "
                     f"{statistics.mean(c['client_seconds'] for c in cells):.0f} |")
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
