"""What installing fedcond puts where, and what it needs.

The Flower adapter lives in the top-level folders ``strategies/`` and ``simulations/`` but is
``fedcond.strategies`` and ``fedcond.simulations`` however the code is loaded: from a wheel
(pyproject.toml's package-dir), from the source tree (fedcond/__init__.py's finder, which
also serves editable installs and the app folder of ``flwr run .``, see
tests/test_flwr_run.py). Nothing generically named lands in site-packages. Every
third-party package the code imports is declared in pyproject.toml.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHOW = ("import fedcond.simulations.client_app as c, fedcond.simulations.server_app as s, "
        "fedcond.strategies.fedcond as f, fedcond.simulations.runner, importlib.util as u, sys; "
        "print(c.__file__, s.__file__, f.__file__); "
        "print(u.find_spec('fedcond.tests'), 'simulations' in sys.modules, 'strategies' in sys.modules)")


def _run_python(code: str, path: Path, cwd: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={"PYTHONPATH": str(path), "PATH": ""},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split("\n")


def test_the_package_list_names_every_package_folder():
    tool = PYPROJECT["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fedcond").rglob("__init__.py")}
    mapped = {"fedcond.strategies": "strategies", "fedcond.simulations": "simulations"}
    assert set(tool["packages"]) == folders | set(mapped)
    assert tool["package-dir"] == mapped
    components = PYPROJECT["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "fedcond.simulations.server_app:app",
                          "clientapp": "fedcond.simulations.client_app:app"}


def test_a_wheel_installs_the_adapter_inside_fedcond(tmp_path):
    source = tmp_path / "src"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("fedcond", "strategies", "simulations"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-compile", "--target", str(target), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "fedcond"]
    files, found = _run_python(SHOW, target, tmp_path)[:2]
    assert files.split() == [str(target / "fedcond" / m) for m in
                             ("simulations/client_app.py", "simulations/server_app.py", "strategies/fedcond.py")]
    assert found == "None False False"


def test_the_source_tree_serves_the_adapter_from_its_top_level_folders(tmp_path):
    files, found = _run_python(SHOW, ROOT, tmp_path)[:2]
    assert files.split() == [str(ROOT / m) for m in
                             ("simulations/client_app.py", "simulations/server_app.py", "strategies/fedcond.py")]
    assert found == "None False False"  # no other top-level folder becomes part of fedcond


def _imports(folder: Path) -> set[str]:
    """Top-level names of the absolute imports in ``folder``'s Python files."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names)


def _declared(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings, normalised (``flwr[simulation]>=1`` -> ``flwr``)."""
    out = set()
    for req in requirements:
        name = req.split(";")[0]
        for sep in "[<>=!~ ":
            name = name.split(sep)[0]
        out.add(name.lower().replace("_", "-"))
    return out


def _undeclared(folders: list[str], declared: set[str]) -> dict[str, list[str]]:
    by_module = packages_distributions()
    local = {p.stem for f in ("tests", "benchmarks", "scripts") for p in (ROOT / f).glob("*.py")}
    missing = {}
    for name in sorted(set().union(*(_imports(ROOT / f) for f in folders)) - local - {"fedcond"}):
        dists = {d.lower().replace("_", "-") for d in by_module.get(name, [])}
        if not dists & declared:
            missing[name] = sorted(dists)
    return missing


def test_every_imported_package_is_declared():
    project = PYPROJECT["project"]
    runtime = _declared(project["dependencies"])
    assert _undeclared(["fedcond", "strategies", "simulations"], runtime) == {}
    everything = runtime | _declared(project["optional-dependencies"]["dev"])
    assert _undeclared(["tests", "benchmarks", "scripts"], everything) == {}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_library_never_imports_the_flower_adapter():
    # Imports point one way: the apps and strategies import fedcond; of fedcond only the CLI imports them.
    adapter = ("fedcond.simulations", "fedcond.strategies", "simulations", "strategies")
    upward = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p) if m.startswith(adapter))
              for p in (ROOT / "fedcond").rglob("*.py")
              if p.relative_to(ROOT).parts[1] not in ("commands", "cli.py")}
    assert {k: v for k, v in upward.items() if v} == {}
    sideways = {str(p.relative_to(ROOT)) for p in (ROOT / "strategies").rglob("*.py")
                if any(m.startswith(("fedcond.simulations", "simulations")) for m in _imported_modules(p))}
    assert sideways == set()


# The package's layers, lowest first (the README's layout):
# the core, the DP primitives, the methods, their users side by side (the Flower-free federated
# logic, the Avalanche parts, the audits), the CLI. A module imports from its own part or a
# lower layer, never upward and never sideways (federated/ and continual/ do not know each other).
LAYERS = (("core",), ("privacy",), ("distill",), ("federated", "continual", "audit"), ("commands", "cli"))


def _part(module: str) -> str | None:
    """The part of fedcond ``module`` belongs to (None: not fedcond, or the Flower adapter)."""
    parts = module.split(".")
    if parts[0] != "fedcond" or parts[1:2] in (["strategies"], ["simulations"]):
        return None
    named = {name for layer in LAYERS for name in layer}
    return parts[1] if len(parts) > 1 and parts[1] in named else "core"


def _arrows_against_the_layers(root: Path) -> list[str]:
    """Every import in ``root``'s fedcond/ that points up a layer or sideways within one."""
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    found = []
    for path in sorted((root / "fedcond").rglob("*.py")):
        here = _part(".".join(path.relative_to(root).with_suffix("").parts))
        for module in sorted(_imported_modules(path)):
            there = _part(module)
            if there is None or there == here or {here, there} == {"commands", "cli"}:
                continue
            if rank[there] >= rank[here]:
                found.append(f"{path.relative_to(root)} -> {module}")
    return found


def test_imports_point_down_the_layers_dp_beneath_the_methods_audits_above(tmp_path):
    assert _arrows_against_the_layers(ROOT) == []
    # The check itself can fail: a DP primitive that uses a method, a method that uses an audit.
    for folder, code in (("privacy", "from fedcond.distill.base import Distiller\n"),
                         ("distill", "def f():\n    import fedcond.audit.canary\n"),
                         ("continual", "from fedcond.federated import partition\n")):
        (tmp_path / "fedcond" / folder).mkdir(parents=True)
        (tmp_path / "fedcond" / folder / "bad.py").write_text(code)
    assert _arrows_against_the_layers(tmp_path) == [
        "fedcond/continual/bad.py -> fedcond.federated", "fedcond/distill/bad.py -> fedcond.audit.canary",
        "fedcond/privacy/bad.py -> fedcond.distill.base"]


def test_the_module_map_names_files_that_exist():
    import fedcond.federated

    doc = fedcond.federated.__doc__
    round_part, around_part = doc.split("Around the round")
    steps = [line.split()[:2] for line in round_part.splitlines() if line.strip()[:1].isdigit()]
    assert [int(n.rstrip(".")) for n, _ in steps] == list(range(1, len(steps) + 1))
    assert len(steps) <= 8  # one FedCond round in at most 8 files
    named = [name for _, name in steps]
    for line in around_part.splitlines():  # each line starts with the files it describes
        for word in line.split():
            if not word.rstrip(",").endswith(".py"):
                break
            named.append(word.rstrip(","))
    assert len(named) > 15
    for name in named:
        assert (ROOT / name if "/" in name else ROOT / "fedcond" / "federated" / name).is_file(), name
    listed = {n for n in named if "/" not in n} | {n.rsplit("/", 1)[1] for n in named if n.startswith("fedcond/")}
    assert {p.name for p in (ROOT / "fedcond" / "federated").glob("*.py")} - {"__init__.py"} <= listed
