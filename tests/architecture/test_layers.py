"""Each package imports only the layers below it (tests/architecture/layers.py), with the imports
still to be moved listed in layering_debt.txt: a new upward import or a cycle fails, and so does a
listed import that is gone (the list only shrinks)."""

from __future__ import annotations

from pathlib import Path

from tests.architecture.layers import edge, import_graph, read_debt, unit_cycles, unit_of, upward_edges
from tests.conftest import REPO_ROOT

DEBT_FILE = Path(__file__).with_name("layering_debt.txt")


def test_no_new_upward_import() -> None:
    new = upward_edges(import_graph(REPO_ROOT)) - read_debt(DEBT_FILE)
    assert not new, "imports from a lower layer into a higher one:\n  " + "\n  ".join(sorted(new))


def test_no_cycle_between_units() -> None:
    cycles = unit_cycles(import_graph(REPO_ROOT), allowed=read_debt(DEBT_FILE))
    assert not cycles, f"units importing each other: {cycles}"


def test_debt_list_only_names_imports_that_still_exist() -> None:
    gone = read_debt(DEBT_FILE) - upward_edges(import_graph(REPO_ROOT))
    assert not gone, f"fixed, now delete from {DEBT_FILE.name}:\n  " + "\n  ".join(sorted(gone))


def test_every_module_has_a_layer() -> None:
    for module in import_graph(REPO_ROOT):
        unit_of(module)  # KeyError names a package missing from UNITS


def test_the_scan_catches_a_bad_import_and_a_cycle(tmp_path: Path) -> None:
    """A deliberate violation in a copy-sized tree: models importing the app, export and training
    importing each other."""
    files = {
        "models/__init__.py": "",
        "models/net.py": "from service.config import Settings\n",
        "service/__init__.py": "",
        "service/config.py": "",
        "export/__init__.py": "",
        "export/writer.py": "def f():\n    from training import loop\n",
        "training/__init__.py": "",
        "training/loop.py": "import export.writer\n",
        "bench/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert upward_edges(graph) == {edge("models.net", "service.config")}
    assert unit_cycles(graph, allowed=set()) == [["export", "training"]]
    assert unit_cycles(graph, allowed={edge("training.loop", "export.writer")}) == []
