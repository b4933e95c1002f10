"""Which CPU engine serves a model: ONNX Runtime or OpenVINO, in fp32, INT8 or bf16, by measurement.

Neither runtime nor precision wins everywhere. On a 2-core development CPU with AVX2 only, OpenVINO
ran FTCN's 3D convolutions 1.3x faster than ONNX Runtime in fp32 and 2x in INT8, where ONNX
Runtime's INT8 was slower than its own fp32; for the 2D frame models ONNX Runtime was often the
faster one. On one with AVX-512 BF16, OpenVINO's bf16 compute ran every bundle model ~2x faster than
ONNX Runtime's fp32. So on a CPU the service opens every allowed candidate, times a few batches of
the model's own input shape, keeps the fastest and closes the rest, logging the table
(``DFS_RUNTIME`` / ``DFS_PRECISION`` narrow the candidates; with one candidate nothing is timed).
The choice is kept in ``DFS_DATA_DIR`` (:class:`ChoiceCache`), so the next start on the same machine
and files opens the winner at once.

An INT8 or bf16 variant is a candidate under ``DFS_PRECISION=auto`` only when its manifest records a
video AUC within :data:`export.manifest.MAX_AUC_DELTA` of fp32 (``python -m export.quantize
--precision int8|bf16``): speed is never bought with unmeasured quality. ``DFS_PRECISION=int8`` or
``bf16`` asks for it regardless; bf16 only where the CPU computes it natively.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.spec import ModelSpec
from service.model_repository import ModelVersion, file_sha256
from service.pipeline.engines import Engine
from service.pipeline.failures import DfsFailure, DfsInputError

log = logging.getLogger(__name__)

CPU_RUNTIMES = ("onnxruntime", "openvino")
CHOICE_FILE = "engine_choice.json"  # in DFS_DATA_DIR
PROBE_REPEATS = 2  # timed runs after one warm-up; the minimum is kept (the least disturbed)


@dataclass(frozen=True)
class Candidate:
    runtime: str  # "onnxruntime" | "openvino"
    precision: str  # "fp32" | "int8"
    path: Path

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"


def candidates(
    version: ModelVersion, runtime: str, precision: str, *, openvino_installed: bool, bf16_cpu: bool = False
) -> list[Candidate]:
    """The engines ``DFS_RUNTIME`` (auto/onnxruntime/openvino) and ``DFS_PRECISION`` allow for one model.

    ``bf16_cpu``: OpenVINO computes bfloat16 natively on this CPU (:func:`cpu_has_bf16`); only then is
    the model's bf16 variant (the fp32 file, computed in bf16 by OpenVINO) a candidate. Raises
    ``DfsFailure`` for a request that cannot be met (OpenVINO asked for, not installed).
    """
    if runtime == "openvino" and not openvino_installed:
        raise DfsFailure("DFS_RUNTIME=openvino but the openvino package is not installed (pip install openvino)")
    runtimes = [
        r for r in CPU_RUNTIMES if r == runtime or (runtime == "auto" and (r != "openvino" or openvino_installed))
    ]
    found: list[Candidate] = []
    for kind in ("int8", "bf16"):
        if precision in ("auto", kind):
            found += _variant_candidates(version, kind, runtimes, forced=precision == kind, bf16_cpu=bf16_cpu)
    if precision in ("auto", "fp32") or not found:
        found += [Candidate(r, "fp32", version.engine_path) for r in runtimes]
    return found


def _variant_candidates(
    version: ModelVersion, kind: str, runtimes: list[str], *, forced: bool, bf16_cpu: bool
) -> list[Candidate]:
    """The ``kind`` variant of ``version`` on each allowed runtime that can serve it; [] with the reason logged.

    Under ``auto`` a variant competes only when its recorded AUC (and the ensemble's, where recorded) is
    within 0.01 of fp32 (:meth:`Variant.quality_kept`); asked for by name (``forced``) it is served
    whatever it measured, where the machine can run it at all.
    """
    variant = version.manifest.variant(kind)
    fallback = "serving fp32" if forced else "not considered"
    if variant is None or not (version.folder / variant.file).is_file():
        if forced:
            log.warning(
                "%s v%d has no %s variant (python -m export.quantize --precision %s makes one); serving fp32",
                version.name,
                version.version,
                kind.upper(),
                kind,
            )
        return []
    if not (forced or variant.quality_kept()):
        delta, ensemble = variant.auc_delta, variant.ensemble_auc_delta
        log.info(
            "%s: %s variant not considered: AUC change %s, the ensemble's %s (allowed +-0.01; DFS_PRECISION=%s "
            "forces it)",
            version.name,
            kind.upper(),
            "not measured" if delta is None else f"{delta:+.3f}",
            "not measured" if ensemble is None else f"{ensemble:+.3f}",
            kind,
        )
        return []
    if kind == "bf16" and not bf16_cpu:
        (log.warning if forced else log.info)(
            "%s: bf16 variant %s: this CPU has no native bfloat16 (AVX-512 BF16 / AMX) for OpenVINO",
            version.name,
            fallback,
        )
        return []
    usable = [r for r in runtimes if variant.runtime in (None, r)]
    if not usable:
        (log.warning if forced else log.info)(
            "%s: %s variant runs on %s only, which DFS_RUNTIME excludes; %s",
            version.name,
            kind.upper(),
            variant.runtime,
            fallback,
        )
    return [Candidate(r, kind, version.folder / variant.file) for r in usable]


def probe_shape(spec: ModelSpec, size: int) -> tuple[int, ...]:
    """The input shape candidates are timed at: ``size`` items of the model's input.

    Size it as the pipeline batches (a track's frames or clips): the runtimes rank differently at
    batch 4 and at 16 (OpenVINO gained on ONNX Runtime with the batch for the frame models).
    """
    return tuple(spec.input_shape(max(1, size)))


def seconds_per_item(engine: Engine, batch: np.ndarray, repeats: int = PROBE_REPEATS) -> float:
    engine.run(batch)  # warm-up: first-run allocations and kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        engine.run(batch)
        best = min(best, time.perf_counter() - started)
    return best / len(batch)


class ChoiceCache:
    """Past choices in one JSON file (``DFS_DATA_DIR/engine_choice.json``), so a restart does not re-time.

    The key holds everything the ranking depends on: the candidates' file digests, the probe's shape,
    the thread setting, the CPU model and core count, both runtimes' versions. A changed file or
    machine misses and is timed again. Written atomically (rename); an unreadable file is ignored.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> dict | None:
        return self._read().get(key)

    def put(self, key: str, entry: dict) -> None:
        entries = self._read()
        entries[key] = entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            scratch = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            scratch.write_text(json.dumps(entries, indent=1, sort_keys=True))
            scratch.replace(self.path)
        except OSError as exc:  # a read-only data dir only costs the next start its timing
            log.warning("engine choice not cached in %s: %s", self.path, exc)


def choice_key(options: list[Candidate], shape: tuple[int, ...], threads: int) -> str:
    """What the ranking of ``options`` depends on, hashed (see :class:`ChoiceCache`)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "-"

    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    facts = {
        "candidates": [(o.runtime, o.precision, file_sha256(o.path)) for o in options],  # digests memoised
        "shape": list(shape),
        "threads": threads,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "onnxruntime": installed("onnxruntime"),
        "openvino": installed("openvino"),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def choose(
    name: str,
    options: list[Candidate],
    open_engine: Callable[[Candidate], Engine],
    shape: tuple[int, ...],
    *,
    threads: int = 0,
    cache: ChoiceCache | None = None,
) -> tuple[Engine, Candidate, dict[str, float]]:
    """Open each candidate, time it on a random batch of ``shape``, keep the fastest; the table is ms
    per item by label. One candidate is opened untimed; with ``cache``, a choice made before for the
    same key (:func:`choice_key`) is reused untimed.
    """
    if len(options) == 1:
        return open_engine(options[0]), options[0], {}
    key = choice_key(options, shape, threads)
    if cache is not None and (past := cache.get(key)) is not None:
        chosen = next((o for o in options if o.label == past.get("chosen")), None)
        if chosen is not None:
            log.info(
                "%s: %s (timed before: %s; %s)",
                name,
                chosen.label,
                ", ".join(f"{label} {ms:.1f} ms/item" for label, ms in past.get("table", {}).items()),
                cache.path,
            )
            return open_engine(chosen), chosen, dict(past.get("table", {}))
    batch = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    best: tuple[float, Engine, Candidate] | None = None
    table: dict[str, float] = {}
    for option in options:
        engine = open_engine(option)
        seconds = seconds_per_item(engine, batch)
        table[option.label] = seconds * 1000
        if best is None or seconds < best[0]:
            best = (seconds, engine, option)
        del engine
    if best is None:
        raise DfsInputError("no engine candidate to time")
    _, engine, chosen = best
    best = None
    gc.collect()  # the losers' sessions and their arenas go now, not at some later collection
    log.info(
        "%s: %s", name, ", ".join(f"{label} {ms:.1f} ms/item" for label, ms in table.items()) + f" -> {chosen.label}"
    )
    if cache is not None:
        cache.put(key, {"model": name, "chosen": chosen.label, "table": table})
    return engine, chosen, table
