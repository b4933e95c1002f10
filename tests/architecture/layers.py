"""The project's layers, and a scan of its import statements against them.

From the ground up (issue 18): ``models`` (networks, specs, registry) -> the media pipeline
(fetch, decode, GPU frames, faces, tracks, crops, evidence drawing) -> engines and contracts
(engines, scoring, the model repository and ensemble file formats) -> ``export`` and ``training``
-> the web app (``service`` config, API, runtime, admission, jobs, CLI, the analysis that ties
the stages to a runtime) -> the export tools that run the app on labelled videos (``export.served``,
``calibrate``, ``fit_ensemble``, ``cross_validate``, ``quantize``) -> ``bench``. A module may
import its own unit and the layers below.

Imports are read with :mod:`ast`, not by importing anything, so the scan is fast and sees
imports inside functions too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Top-level packages scanned (tests/ and scripts/ may import anything).
PACKAGES = ("models", "service", "export", "training", "bench")

#: (unit, layer) by module-name prefix; the longest prefix wins. Export and training share a layer
#: and are two units, so an import between them in both directions is a cycle.
UNITS: dict[str, tuple[str, int]] = {
    "models": ("models", 0),
    "service.pipeline": ("media", 1),
    "service.pipeline.engines": ("engines", 2),
    "service.pipeline.triton_engine": ("engines", 2),
    "service.pipeline.openvino_engine": ("engines", 2),
    "service.pipeline.tensorrt_engine": ("engines", 2),
    "service.pipeline.engine_choice": ("engines", 2),
    "service.pipeline.heatmap_runner": ("engines", 2),
    "service.pipeline.engine_metrics": ("engines", 2),
    "service.pipeline.scores": ("engines", 2),
    "service.model_repository": ("engines", 2),
    "export.manifest": ("engines", 2),
    "export.ensemble": ("engines", 2),
    "export.errors": ("engines", 2),  # no imports; the ensemble file format (engines) raises its kinds too
    "export": ("export", 3),
    "training": ("training", 3),
    "service": ("app", 4),
    "service.pipeline.analyse": ("app", 4),
    "service.pipeline.evidence": ("app", 4),
    # tools that run the whole app on labelled videos in-process (calibration, ensemble fit, INT8)
    "export.served": ("served", 5),
    "export.calibrate": ("served", 5),
    "export.fit_ensemble": ("served", 5),
    "export.cross_validate": ("served", 5),  # refits calibration and ensemble on served scores
    "export.quantize": ("served", 5),
    "bench": ("bench", 6),
}


def unit_of(module: str) -> tuple[str, int]:
    """The unit and layer of a module (by its longest listed prefix)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in UNITS:
            return UNITS[prefix]
    raise KeyError(f"{module} is in no layer: add its package to UNITS")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, known: set[str]) -> set[str]:
    """Project modules a file imports: ``from a.b import c`` is ``a.b.c`` when that is a module."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports, for every ``.py`` file of :data:`PACKAGES`."""
    files = {module_name(root, path): path for package in PACKAGES for path in (root / package).rglob("*.py")}
    known = set(files)
    return {
        module: imported_modules(ast.parse(path.read_text(), str(path)), known) - {module}
        for module, path in files.items()
    }


def edge(importer: str, imported: str) -> str:
    return f"{importer} -> {imported}"


def upward_edges(graph: Mapping[str, Iterable[str]]) -> set[str]:
    """Imports from a lower layer into a higher one."""
    return {edge(a, b) for a, targets in graph.items() for b in targets if unit_of(b)[1] > unit_of(a)[1]}


def unit_cycles(graph: Mapping[str, Iterable[str]], allowed: set[str]) -> list[list[str]]:
    """Cycles between units made by the edges not in ``allowed`` (strongly connected components
    of more than one unit, Tarjan's algorithm), each as its sorted unit names."""
    units: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        for b in targets:
            ua, ub = unit_of(a)[0], unit_of(b)[0]
            if ua != ub and edge(a, b) not in allowed:
                units[ua].add(ub)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in units.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in list(units):
        if node not in index:
            visit(node)
    return components


def read_debt(path: Path) -> set[str]:
    """The edges the refactor has still to remove: one ``a -> b`` per line, ``#`` comments."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


if __name__ == "__main__":  # print today's upward and cycle-making edges (to start or check the debt list)
    repo = Path(__file__).resolve().parents[2]
    graph = import_graph(repo)
    debt = upward_edges(graph)
    sideways = {
        edge(a, b)
        for a, t in graph.items()
        for b in t
        if unit_of(a)[1] == unit_of(b)[1] and unit_of(a)[0] != unit_of(b)[0]
    }
    for line in sorted(debt | sideways):
        print(line)
