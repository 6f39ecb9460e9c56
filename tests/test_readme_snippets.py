"""The README's Python snippets, run exactly as a user pastes them: the code is extracted
from README.md (the block after ``<!-- snippet:NAME -->``), not copied here.

The Avalanche script downloads MNIST through Avalanche's ``SplitMNIST``; offline and on a
CPU budget, this test puts a stand-in under that name: scikit-learn's digits upsampled to
28 x 28 (the shape ``SimpleMLP`` expects), 20 training images per class, split into the
same five experiences of two classes. Everything else — model, optimiser, strategy,
plugin, evaluation — is the text of the README.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(name: str) -> str:
    """The first fenced code block after ``<!-- snippet:name -->`` in the README."""
    match = re.search(rf"<!-- snippet:{name} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md has no python block after <!-- snippet:{name} -->"
    return match.group(1)


def digits_as_split_mnist(n_experiences: int = 5, seed: int = 0, **_: object):
    """Stands in for ``avalanche.benchmarks.classic.SplitMNIST``: split digits at 28 x 28."""
    from fedcond.continual.benchmarks import make_benchmark
    from fedcond.data import load_dataset

    digits = load_dataset("digits")
    big = dataclasses.replace(digits, train_images=F.interpolate(digits.train_images, size=(28, 28), mode="bilinear"),
                              test_images=F.interpolate(digits.test_images, size=(28, 28), mode="bilinear"))
    # 20 training images per class keep the plugin's distillation (DM in a ConvNet) CPU-fast
    return make_benchmark("split-digits", n_experiences=n_experiences, seed=seed, data=big,
                          train_fraction=0.15).scenario


def test_avalanche_snippet_runs_as_written(monkeypatch, capsys):
    importlib.import_module("fedcond.continual")  # first, as in the snippet: it filters qpsolvers' warning
    import avalanche.benchmarks.classic as classic

    code = snippet("avalanche")
    assert "from avalanche.benchmarks.classic import SplitMNIST" in code  # what the stand-in replaces
    monkeypatch.setattr(classic, "SplitMNIST", digits_as_split_mnist)
    torch.set_num_threads(1)
    exec(compile(code, "README.md:avalanche", "exec"), {"__name__": "__main__"})
    printed = re.search(r"final average accuracy ([0-9.]+)", capsys.readouterr().out)
    assert printed, "the snippet prints its final average accuracy"
    # Naive fine-tuning alone forgets all but the last experience (about 0.2); the
    # distilled memory keeps the earlier classes.
    assert float(printed.group(1)) > 0.5


def test_distillation_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it saves dm1.safetensors in the working folder
    torch.set_num_threads(1)
    exec(compile(snippet("distill"), "README.md:distill", "exec"), {"__name__": "__main__"})
    assert (tmp_path / "dm1.safetensors").is_file()
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"'accuracy_mean': ([0-9.]+)", printed).group(1))
    assert accuracy > 0.8  # DM at IPC 1 on digits (random real images: about 0.67)


@pytest.mark.parametrize("name", ["avalanche", "distill"])
def test_snippets_are_complete_scripts(name):
    """Pasteable: the block imports what it uses (it compiles, and imports come first)."""
    code = snippet(name)
    compile(code, name, "exec")
    first = next(line for line in code.splitlines() if line.strip())
    assert first.startswith("import ") or first.startswith("from ")


def test_readme_is_short_and_its_links_resolve():
    """A newcomer's five minutes: at most 200 lines; every relative link in the README and
    docs/ names a file that exists (and an anchor that exists in it)."""
    root = README.parent
    assert len(README.read_text().splitlines()) <= 200
    for page in [README, *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+?\.(?:md|png))(?:#([^)\s]+))?\)", page.read_text()):
            path = (page.parent / target[0]).resolve()
            assert path.is_file(), f"{page.name} links to {target[0]}, which does not exist"
            if target[1]:
                anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}
                assert target[1] in anchors, f"{page.name} links to {target[0]}#{target[1]}: no such heading"
        for anchor in re.findall(r"\]\(#([^)\s]+)\)", page.read_text()):
            assert anchor in {_anchor(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}, anchor


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
