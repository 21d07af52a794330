"""The user's own pipelines and operators, next to the shipped ones.

- Pipelines: every `*.py` in `$DATAFLOW_HOME/pipelines/` (and in each folder of `DATAFLOW_PIPELINES_PATH`,
  `os.pathsep`-separated) that defines a `SPEC` is loaded by `dataflow_assets.pipelines.shipped()`, so
  `Definitions` (hence `dagster dev`) and `dataflow run` see it at once. A file that fails to import,
  or whose name clashes with a shipped pipeline, is skipped with a warning (never breaks the project).
- Operators: every `*.py` in `$DATAFLOW_HOME/operators/` is imported as `dataflow_user_operators.<stem>`,
  so its `@register`ed classes join the registry (domain `custom`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path

USER_OPS_PACKAGE = "dataflow_user_operators"
USER_PIPELINES_PACKAGE = "dataflow_user_pipelines"


def home() -> Path:
    return Path(os.environ.get("DATAFLOW_HOME", ".dataflow")).expanduser().resolve()


def pipelines_dir() -> Path:
    return home() / "pipelines"


def operators_dir() -> Path:
    return home() / "operators"


def pipeline_dirs() -> list[Path]:
    extra = [Path(p).expanduser().resolve() for p in os.environ.get("DATAFLOW_PIPELINES_PATH", "").split(os.pathsep) if p]
    return [pipelines_dir(), *extra]


def _package(name: str, path: Path) -> None:
    pkg = sys.modules.get(name)
    if pkg is None:
        pkg = types.ModuleType(name)
        pkg.__path__ = []  # a namespace-like package: modules are loaded by file
        sys.modules[name] = pkg
    if str(path) not in pkg.__path__:
        pkg.__path__.append(str(path))


def import_file(path: Path, package: str) -> types.ModuleType:
    """Import `path` as `<package>.<stem>` (re-imported when the file changed since)."""
    _package(package, path.parent)
    name = f"{package}.{path.stem}"
    mtime = path.stat().st_mtime_ns
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__dataflow_mtime__", None) == mtime and getattr(mod, "__file__", None) == str(path):
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    mod.__dataflow_mtime__ = mtime
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def load_user_operators(folder: Path | None = None) -> list[str]:
    """Import the user operators folder; returns one problem line per file that failed."""
    folder = folder or operators_dir()
    problems = []
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        try:
            import_file(path, USER_OPS_PACKAGE)
        except Exception as err:  # noqa: BLE001 - a broken user file is reported, not fatal
            problems.append(f"{path}: {type(err).__name__}: {err}")
    return problems


def user_pipelines(shipped_names: set[str] | frozenset[str] = frozenset()) -> dict:
    """name -> ShippedPipeline for every user pipeline file with a `SPEC`."""
    specs = {}
    if any(d.is_dir() and any(d.glob("*.py")) for d in pipeline_dirs()):
        load_user_operators()
    for folder in pipeline_dirs():
        for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
            if path.name.startswith("_"):
                continue
            try:
                spec = getattr(import_file(path, USER_PIPELINES_PACKAGE), "SPEC", None)
            except Exception as err:  # noqa: BLE001
                warnings.warn(f"user pipeline {path} skipped: {type(err).__name__}: {err}")
                continue
            if spec is None:
                continue
            if spec.name in shipped_names or spec.name in specs:
                warnings.warn(f"user pipeline {path} skipped: the name {spec.name!r} is already taken")
                continue
            specs[spec.name] = spec
    return specs
