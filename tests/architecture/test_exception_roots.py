"""Each package raises from one root exception type (issue 18, "errors at the right depth").

A caller can catch everything ``training`` refuses with ``except TrainingError`` (and so on for
each package) while ``except ValueError`` keeps working, because every kind also derives from the
builtin it replaces. The scan reads the source with :mod:`ast`: it fails on a ``raise`` of a bare
builtin such as ``ValueError`` and on an exception class that derives from a builtin directly
instead of from its package's root (outside the package's errors module).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

#: package -> the module that holds its root, and the root's name
ROOTS = {
    "models": ("models.errors", "ModelError"),
    "training": ("training.errors", "TrainingError"),
    "export": ("export.errors", "ExportError"),
    "service": ("service.pipeline.failures", "DfsError"),
}
#: builtins a package may still raise: programming errors and protocol signals, not refusals
ALLOWED = {
    "TypeError",
    "KeyError",
    "IndexError",
    "NotImplementedError",
    "AttributeError",
    "StopIteration",
    "SystemExit",
}
#: runs inside Triton's own Python, where this repository's packages are not importable
OUTSIDE = {Path("export/triton_python_backend/model.py")}
BUILTIN_ERRORS = {
    name for name, value in vars(builtins).items() if inspect.isclass(value) and issubclass(value, BaseException)
}


def _name(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Call):
        node = node.func
    return node.id if isinstance(node, ast.Name) else None


def offences(source: str, *, errors_module: bool = False) -> list[str]:
    """The bare builtin raises and builtin-derived classes in ``source``, as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and (name := _name(node.exc)) in BUILTIN_ERRORS - ALLOWED:
            found.append(f"{node.lineno}: raise {name}")
        if isinstance(node, ast.ClassDef) and not errors_module:
            direct = [b for b in map(_name, node.bases) if b in BUILTIN_ERRORS]
            if direct:
                found.append(f"{node.lineno}: class {node.name}({', '.join(direct)})")
    return found


def test_the_scan_sees_what_it_should() -> None:
    bad = "class Oops(ValueError):\n    pass\n\n\ndef f():\n    raise RuntimeError('x')\n"
    assert offences(bad) == ["1: class Oops(ValueError)", "6: raise RuntimeError"]
    fine = "class Oops(ModelInputError):\n    pass\n\n\ndef f():\n    raise TypeError('bug')\n"
    assert offences(fine) == []


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_package_raises_from_its_root(package: str) -> None:
    root_module, root_name = ROOTS[package]
    errors_file = Path(*root_module.split(".")).with_suffix(".py")
    found = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        relative = path.relative_to(REPO_ROOT)
        if relative in OUTSIDE:
            continue
        found += [f"{relative}:{o}" for o in offences(path.read_text(), errors_module=relative == errors_file)]
    assert not found, f"raise from {root_module}.{root_name} (or a kind of it) instead:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_kind_in_the_errors_module_is_a_root(package: str) -> None:
    module_name, root_name = ROOTS[package]
    module = importlib.import_module(module_name)
    root = getattr(module, root_name)
    kinds = [v for v in vars(module).values() if inspect.isclass(v) and issubclass(v, BaseException)]
    assert root in kinds and all(issubclass(kind, root) for kind in kinds if kind.__module__ == module_name)
