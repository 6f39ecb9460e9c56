"""``fedcond relabel``: give a synthetic set a teacher's soft labels (knowledge distillation)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import typer

from fedcond.commands.common import (
    console,
    existing_file,
    existing_folder,
    progress_bar,
    user_errors,
    writable_file,
)
from fedcond.errors import FedcondError
from fedcond.synthetic import DEFAULT_MAX_BYTES


@user_errors
def command(
    path: Path = typer.Argument(..., help="the synthetic.safetensors file to relabel"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="the real data set the teacher is trained (or tested) on"),
    out: Path = typer.Option(
        ...,
        "--out",
        help="OUT.safetensors (record: OUT.run.json), or a folder (synthetic.safetensors and run.json in it)",
    ),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="reuse a teacher saved with --save-teacher"),
    teacher_model: Optional[str] = typer.Option(
        None, "--teacher-model", help="network to train as teacher (default convnet)"
    ),
    teacher_epochs: Optional[int] = typer.Option(
        None, "--teacher-epochs", help="epochs of teacher training on the real data (default 30)"
    ),
    teacher_dsa: Optional[str] = typer.Option(
        None, "--teacher-dsa", help="train the teacher with these DSA families, e.g. crop_scale_rotate"
    ),
    temperature: float = typer.Option(
        4.0, "--temperature", "-t", help="softmax temperature T of the labels and the KD loss"
    ),
    save_teacher_to: Optional[Path] = typer.Option(
        None, "--save-teacher", help="save the trained teacher here (.safetensors)"
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="read the data set from this local mirror"),
    seed: int = typer.Option(0, "--seed", help="seed of the teacher's initialisation and shuffling"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-bytes", help="refuse synthetic set files larger than this"),
) -> None:
    """Relabel a synthetic set with a teacher's temperature-softened probabilities (KD soft labels)."""
    from fedcond.data import load_dataset, under_normalization
    from fedcond.evaluate import check_compatible
    from fedcond.models import MODEL_NAMES
    from fedcond.relabel import (
        check_teacher_fits,
        describe_teacher,
        load_teacher,
        relabel,
        save_teacher,
        train_teacher,
    )
    from fedcond.runinfo import resolve_device, run_record, write_json
    from fedcond.synthetic import SyntheticSet
    from fedcond.zca import zca_regularization

    if teacher is not None and (teacher_model is not None or teacher_dsa is not None or teacher_epochs is not None):
        raise FedcondError(
            "give either --teacher FILE (a saved teacher) or --teacher-model/--teacher-epochs/--teacher-dsa "
            "to train one, not both"
        )
    if teacher is not None and save_teacher_to is not None:
        raise FedcondError("--save-teacher saves a newly trained teacher; drop it when reusing --teacher")
    teacher_epochs = 30 if teacher_epochs is None else teacher_epochs
    if teacher_epochs < 1:
        raise FedcondError(f"--teacher-epochs must be >= 1, got {teacher_epochs}")
    if not temperature > 0:
        raise FedcondError(f"--temperature must be > 0, got {temperature}")
    model = (teacher_model or "convnet").lower()
    if model not in MODEL_NAMES:
        raise FedcondError(f"unknown model {model!r} for --teacher-model: use one of {', '.join(MODEL_NAMES)}")
    augment = None
    if teacher_dsa is not None:
        from fedcond.augment import DSA, parse_strategy

        parse_strategy(teacher_dsa)  # a bad family is a user error before any training
        augment = DSA(strategy=teacher_dsa)
    set_path, record_path = _outputs(out)
    if set_path.resolve() == path.resolve():
        raise FedcondError(f"--out {set_path} is the input set; write the relabelled set elsewhere")
    writable_file(set_path, "--out")
    writable_file(record_path, "--out")
    if save_teacher_to is not None:
        writable_file(save_teacher_to, "--save-teacher")
    existing_file(teacher, "--teacher")
    existing_folder(data_dir)
    sset = SyntheticSet.load(path, max_bytes=max_bytes)  # fail fast on bad files
    dev = resolve_device(device)
    data = under_normalization(load_dataset(dataset, data_dir=data_dir, device=dev), sset.mean, sset.std)
    check_compatible(sset, data)
    zca = zca_regularization(sset.config)  # a ZCA-space set needs a teacher trained in ZCA space

    start = time.perf_counter()
    if teacher is not None:
        net, info = load_teacher(teacher, device=dev)
        check_teacher_fits(sset, info)  # before any forward pass on mismatched shapes
        if info.dataset != data.name:
            console.print(
                f"[yellow]note:[/] the teacher was trained on {info.dataset!r}, relabelling with {data.name!r}"
            )
        # Report the accuracy measured on this data set now, not the one stored in the file.
        measured = describe_teacher(net, data, info.model, info.zca_regularization)
        info = dataclasses.replace(info, accuracy=measured.accuracy)
    else:
        with progress_bar(f"teacher {model}", total=teacher_epochs) as update:
            net = train_teacher(data, model, teacher_epochs, seed, augment=augment, zca_regularization=zca,
                                on_epoch=lambda e, loss: update(e + 1, teacher_epochs, loss=loss))
        info = describe_teacher(net, data, model, zca, teacher_epochs, seed)
        if save_teacher_to is not None:
            save_teacher(save_teacher_to, net, info)
            typer.echo(f"wrote teacher {save_teacher_to}")
    typer.echo(f"teacher {info.model} test accuracy on {data.name}: {100 * info.accuracy:.2f} %")  # type: ignore[operator]

    relabelled = relabel(sset, net, temperature, info)
    # How often the teacher's top class is the label the set had: low means it overrules them.
    agreement = float((relabelled.hard_labels == sset.hard_labels).float().mean())
    typer.echo(f"teacher's top class matches the set's labels on {100 * agreement:.1f} % of its images")
    nbytes = relabelled.save(set_path)
    write_json(
        record_path,
        run_record(
            dev,
            source=str(path),
            dataset=data.name,
            method=sset.method,
            ipc=sset.ipc,
            seed=seed,
            temperature=temperature,
            teacher=info.to_dict(),
            teacher_path=str(teacher or save_teacher_to) if (teacher or save_teacher_to) else None,
            teacher_dsa=teacher_dsa,
            wall_time_s=time.perf_counter() - start,
            nbytes=nbytes,
            num_images=relabelled.num_images,
            class_counts=relabelled.class_counts(),
            label_agreement=agreement,
        ),
    )
    typer.echo(
        f"wrote {set_path} ({relabelled.num_images} images, soft labels at T={temperature:g}, {nbytes} bytes), "
        f"{record_path}"
    )


def _outputs(out: Path) -> tuple[Path, Path]:
    """(set file, run record) for ``--out``: a ``.safetensors`` file, or a folder like distill's."""
    if out.suffix == ".safetensors":
        return out, out.with_suffix(".run.json")
    if out.exists() and not out.is_dir():
        raise FedcondError(
            f"--out {out} is an existing file that is not .safetensors; give OUT.safetensors or a folder"
        )
    return out / "synthetic.safetensors", out / "run.json"
