"""The import rules of docs/architecture.md, checked on the source: each package of `ad` may import only the
packages below it, never a private module (`_name`) of another package, and the ground floor stays free of
torch. A new package must be given its place here and in the docs before it can land."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

import pytest

AD = Path(__file__).resolve().parent.parent / "ad"

# package -> the packages it may import (besides itself). Mirrors the table in docs/architecture.md.
FLOOR = {"errors", "values"}
ALLOWED: Dict[str, Set[str]] = {
    "errors": set(),
    "values": {"errors"},
    "io": {"errors"},
    "registry": set(),
    "metrics": FLOOR,
    "stats": FLOOR | {"metrics"},
    "rundir": FLOOR | {"io"},
    "visualize": FLOOR | {"metrics"},
    "backbones": FLOOR | {"io"},
    "models": FLOOR | {"io", "backbones", "registry"},
    "data": FLOOR | {"io", "registry"},
    "engine": FLOOR | {"io", "metrics", "rundir", "visualize", "registry", "models", "data"},
    "loggers": FLOOR | {"io", "metrics", "rundir", "visualize"},
    "config": FLOOR | {"io", "rundir", "registry"},
    "launch": FLOOR | {"io", "rundir", "config"},
    "aggregate": FLOOR | {"io", "metrics", "stats", "rundir", "visualize", "config", "registry"},
    "report": FLOOR | {"io", "metrics", "stats", "rundir", "visualize", "config", "registry", "aggregate"},
    "predict": FLOOR | {"io", "metrics", "rundir", "visualize", "registry", "models", "data", "engine"},
    "train": FLOOR | {"io", "rundir", "registry", "models", "data", "engine", "loggers", "launch", "config"},
    "deploy": FLOOR | {"io"},
    "serve": FLOOR | {"io", "deploy"},
    "export": FLOOR | {"io", "rundir", "registry", "models", "data", "engine", "predict", "deploy"},
    "__init__": set(),
    "__main__": set(),
}
# Packages that must import without torch (the torch-free ground floor and run-dir readers).
TORCH_FREE = {"errors", "values", "io", "registry", "metrics", "stats", "visualize", "deploy", "serve"}


def _package(path: Path) -> str:
    rel = path.relative_to(AD)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, dotted module) for every `import` / `from ... import` in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            if node.module == "ad":  # `from ad import metrics`
                for alias in node.names:
                    yield node.lineno, f"ad.{alias.name}"


def _sources() -> list:
    return sorted(AD.rglob("*.py"))


def test_every_package_has_a_place_in_the_rules():
    unknown = sorted({_package(p) for p in _sources()} - set(ALLOWED))
    assert not unknown, (f"packages {unknown} have no place in the import rules: add them to ALLOWED here and "
                         "to the table in docs/architecture.md")


def test_packages_import_only_what_the_layers_allow():
    bad = []
    for path in _sources():
        pkg = _package(path)
        for line, mod in _imports(path):
            parts = mod.split(".")
            if parts[0] != "ad" or len(parts) < 2 or parts[1] == pkg:
                continue
            if parts[1] not in ALLOWED.get(pkg, set()) and parts[1] != "__version__":
                bad.append(f"{path.relative_to(AD.parent)}:{line} ({pkg}) imports {mod}")
    assert not bad, "imports against the layer rules:\n" + "\n".join(bad)


def test_no_private_module_of_another_package_is_imported():
    bad = []
    for path in _sources():
        here = ".".join(("ad",) + path.relative_to(AD).parent.parts)
        for line, mod in _imports(path):
            parts = mod.split(".")
            if parts[0] != "ad":
                continue
            private = next((i for i, p in enumerate(parts) if p.startswith("_") and p != "__init__"), None)
            if private is None:
                continue
            owner = ".".join(parts[:private])  # the package that owns the private module
            if not (here == owner or here.startswith(owner + ".")):
                bad.append(f"{path.relative_to(AD.parent)}:{line} imports {mod} (private to {owner})")
    assert not bad, "private cross-package imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("pkg", sorted(TORCH_FREE))
def test_the_ground_floor_does_not_import_torch(pkg):
    files = [p for p in _sources() if _package(p) == pkg]
    assert files, f"no sources for ad.{pkg}"
    bad = [f"{p.relative_to(AD.parent)}:{line} imports {mod}" for p in files for line, mod in _imports(p)
           if mod.split(".")[0] in ("torch", "torchvision", "timm")]
    assert not bad, "\n".join(bad)


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checker itself: a model module importing the engine, or another package's private module, fails."""
    fake = tmp_path / "ad"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "bad.py").write_text("from ad.engine.pipeline import run_experiment\nfrom ad.data._base import Sample\n")
    monkeypatch.setattr(__import__(__name__), "AD", fake, raising=False)
    globals()["AD"], old = fake, AD
    try:
        with pytest.raises(AssertionError, match="imports ad.engine.pipeline"):
            test_packages_import_only_what_the_layers_allow()
        with pytest.raises(AssertionError, match="private to ad.data"):
            test_no_private_module_of_another_package_is_imported()
    finally:
        globals()["AD"] = old
