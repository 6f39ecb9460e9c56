"""fedcond: federated and continual learning built on dataset distillation."""

import sys
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

__version__ = "0.1.0"

# The Flower adapter lives in the repository's top-level folders strategies/ and simulations/;
# a wheel installs them as fedcond.strategies and fedcond.simulations (pyproject.toml's
# package-dir). Loaded from a source tree instead (the checkout on sys.path, an editable
# install, the app folder `flwr run .` unpacks, which holds fedcond/ beside those folders),
# fedcond/ has no such subfolders: this finder answers for exactly those two names, from the
# tree's root. (Appending the root to __path__ would also make fedcond.tests, fedcond.fedcond
# and every other top-level folder importable as part of fedcond.)
_ADAPTERS = ("strategies", "simulations")
_ROOT = Path(__file__).resolve().parent.parent


class _SourceTreeAdapters:
    """``fedcond.strategies`` and ``fedcond.simulations`` from a source tree's root."""

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        parent, _, name = fullname.rpartition(".")
        if parent != __name__ or name not in _ADAPTERS:
            return None
        return PathFinder.find_spec(fullname, [str(_ROOT)])


if (not (Path(__file__).parent / "simulations").is_dir()
        and all((_ROOT / name / "__init__.py").is_file() for name in _ADAPTERS)
        and (_ROOT / "pyproject.toml").is_file()):
    sys.meta_path.append(_SourceTreeAdapters)
