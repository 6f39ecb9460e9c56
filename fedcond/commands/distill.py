"""``fedcond distill``: condense a data set into a SyntheticSet, with run record and grid."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import typer

from fedcond.commands.common import (
    console,
    existing_folder,
    parse_options,
    progress_bar,
    set_threads,
    user_errors,
    writable_folder,
)
from fedcond.distill.base import DistillConfig
from fedcond.errors import FedcondError
from fedcond.precision import DEFAULT_PRECISION, check_precision, resolve_precision
from fedcond.synthetic import STORAGE_DTYPES


@user_errors
def command(
    dataset: str = typer.Option(
        ..., "--dataset", "-d", help="digits, mnist, fashion-mnist, cifar10, cifar100, svhn, or an ImageFolder path"
    ),
    out: Path = typer.Option(..., "--out", help="output folder (synthetic.safetensors, run.json, grid.png)"),
    method: str = typer.Option(
        "dm",
        "--method",
        "-m",
        help="distillation or coreset method (random, herding, kcenter, dm, dp-dm, dc, dsa, mtt, dd, kip, frepo)",
    ),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", help="dp-dm: the privacy budget epsilon"),
    delta: Optional[float] = typer.Option(None, "--delta", help="dp-dm: the privacy budget delta (default 1e-5)"),
    normalize: Optional[str] = typer.Option(
        None, "--normalize", help="public, train or MEAN:STD per channel (default: the data set's; dp-dm: public)"
    ),
    ipc: int = typer.Option(DistillConfig.ipc, "--ipc", help="images per class"),
    iterations: Optional[int] = typer.Option(
        None, "--iterations", "-n", help="iterations, for methods that iterate (default: the method's)"
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="read the data set from this local mirror instead of downloading"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of every random draw"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    model: str = typer.Option("convnet", "--model", help="network used for features / matching"),
    dtype: str = typer.Option("float32", "--dtype", help=f"image storage: {', '.join(STORAGE_DTYPES)}"),
    option: Optional[list[str]] = typer.Option(
        None, "--option", "-o", help="method option key=value (repeatable), e.g. -o lr_images=0.5"
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for torch (default: torch's; 1 is fastest on a busy machine)"
    ),
    precision: str = typer.Option(
        DEFAULT_PRECISION, "--precision",
        help="auto, float32 or bfloat16 (autocast); auto: bfloat16 where the device runs it fast",
    ),
) -> None:
    """Distill a data set into a few synthetic images per class."""
    from fedcond.data import load_dataset
    from fedcond.distill import Callback, make_distiller
    from fedcond.privacy.normalisation import public_normalisation
    from fedcond.runinfo import peak_memory_bytes, resolve_device, run_record, write_json
    from fedcond.visualize import save_grid

    if dtype not in STORAGE_DTYPES:
        raise FedcondError(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    writable_folder(out)  # before any work: a distillation must never be lost to its output path
    existing_folder(data_dir)
    set_threads(threads)
    check_precision(precision, "--precision")
    dev = resolve_device(device)
    options = parse_options(option)
    options.update({name: value for name, value in (("epsilon", epsilon), ("delta", delta)) if value is not None})
    # Re-running the command resumes from the checkpoints and reuses MTT's experts, unless -o says otherwise.
    folders = {"checkpoint_dir": str(out / "checkpoints"), "experts_dir": str(out / "experts")}
    folders = {k: v for k, v in folders.items() if k not in options}
    distiller, config = make_distiller(method, options, fixed={"ipc": ipc, "model": model, "iterations": iterations,
                                                               "precision": precision, **folders})
    # What the run records is what ran, never "auto": the method resolves it for the device.
    ran = resolve_precision(getattr(config, "precision", "float32"), dev)
    if not hasattr(config, "precision") and precision != "auto":
        raise FedcondError(f"method {method!r} has no precision setting (it runs in float32); drop --precision")
    iterative = "iterations" in config.to_dict()
    if iterations is not None and not iterative:
        raise FedcondError(f"method {method!r} does not iterate; drop --iterations")

    private = distiller.private  # a DP method: nothing private outside its mechanism
    if private:  # the method checks the data it is given too; this picks the default and fails early
        normalize = public_normalisation(normalize, method)
    data = load_dataset(dataset, data_dir=data_dir, device=dev, normalize=normalize)
    size = "private number of" if private else data.train_images.shape[0]  # DP: the exact size is not output
    console.print(f"[bold]{method}[/] on {data.name}: {size} train images, "
                  f"{data.num_classes} classes, shape {data.image_shape}, device {dev}")
    stamps: list[tuple[float, int]] = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    with progress_bar(f"distill {method}") as update:
        class Bar(Callback):
            def on_progress(self, iteration: int, total: int, metrics: dict[str, float]) -> None:
                stamps.append((time.perf_counter(), iteration))
                update(iteration, total, **metrics)

            def on_experts(self, done: int, total: int) -> None:  # MTT's experts train first: same bar
                update(done, total, expert_epochs=done)

        sset = distiller.distill(data, config, torch.Generator().manual_seed(seed), dev, [Bar()])
    wall = time.perf_counter() - start
    sset.storage_dtype = dtype
    nbytes = sset.save(out / "synthetic.safetensors")
    save_grid(sset, out / "grid.png")

    record = run_record(dev, method=method, dataset=data.name, ipc=ipc, seed=seed, config=config.to_dict(),
                        wall_time_s=wall, peak_memory_bytes=peak_memory_bytes(dev), nbytes=nbytes,
                        num_images=sset.num_images, class_counts=sset.class_counts(), storage_dtype=dtype,
                        precision=sset.config.get("precision", ran))
    if iterative:
        record["iterations"] = config.iterations  # type: ignore[attr-defined]
        record["seconds_per_iteration"] = _seconds_per_iteration(stamps, wall, config.iterations)  # type: ignore[attr-defined]
    if "privacy" in sset.config:  # a DP method: the guarantee it spent (also in the set's metadata)
        record["epsilon"] = sset.config["privacy"]["epsilon"]
        record["adjacency"] = sset.config["privacy"]["adjacency"]
        record["privacy"] = sset.config["privacy"]
        # Time and memory grow with the number of training images: outside the guarantee, so not recorded.
        for key in ("wall_time_s", "peak_memory_bytes", "seconds_per_iteration"):
            record.pop(key, None)
        record["timings"] = "not recorded for a DP run: they depend on the private data's size"
    write_json(out / "run.json", record)
    typer.echo(f"wrote {out / 'synthetic.safetensors'} ({sset.num_images} images, {nbytes} bytes), "
               f"{out / 'run.json'}, {out / 'grid.png'}" + ("" if private else f" in {wall:.1f} s"))
    if "privacy" in sset.config:
        typer.echo(privacy_line(sset.config["privacy"]))


def privacy_line(privacy: dict) -> str:
    """The guarantee a DP set achieved, as the accountant certifies it (run.json has the details)."""
    return (f"privacy: ({privacy['epsilon']:.4g}, {privacy['delta']:.3g})-DP (epsilon, delta achieved; target epsilon "
            f"{privacy['target_epsilon']:.4g}) for {privacy['adjacency']}, {privacy['accountant']} accountant, "
            f"{privacy['steps']} step{'s' if privacy['steps'] != 1 else ''} at noise multiplier "
            f"{privacy['noise_multiplier']:.3g}")


def _seconds_per_iteration(stamps: list[tuple[float, int]], wall: float, iterations: int) -> float:
    """Steady-state time per iteration from progress events (set-up excluded), else wall / n."""
    if len(stamps) >= 2 and stamps[-1][1] > stamps[0][1]:
        return (stamps[-1][0] - stamps[0][0]) / (stamps[-1][1] - stamps[0][1])
    return wall / max(1, iterations)
