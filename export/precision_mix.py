"""Which models may compute in a faster precision *together*: the measured set the service can serve.

A variant can keep its own AUC and still reorder the ensemble's videos, whose scores sit close
together: with every bundle model in bf16 the served ensemble moved 0.879 -> 0.848 while no model
alone moved more than 0.015. All-or-nothing throws away the models whose error does no harm. So
``export.quantize`` measures the ensemble with every *set* of models in the variant precision (the
others fp32), from the same two served passes (fp32 and all-variant: each model's logits in a mixed
set are its logits of one pass or the other, the faces and items being the same), and keeps the set
that saves the most inference time among those whose **every subset** also keeps the ensemble
within :data:`~export.manifest.MAX_AUC_DELTA`. Downward closed, because the service times each
model's candidates on its own and may serve only part of the set in the variant precision: whatever
part it serves was measured.

With five models that is 31 sets, each an AUC over the same per-video scores: nothing is served again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations

from export.manifest import within_auc_bar


@dataclass(frozen=True)
class MixRecord:
    """What one model's variant entry records: the ensemble AUC measured with ``together`` in the
    variant precision, chosen so that the service's per-model check (its own AUC and this one within
    the bar) passes exactly for the chosen set's members."""

    together: tuple[str, ...]
    ensemble_auc: float


@dataclass(frozen=True)
class MixChoice:
    chosen: tuple[str, ...]  # the models that may serve the variant together (sorted)
    ensemble_auc: float  # the ensemble's AUC with all of them in the variant precision
    records: dict[str, MixRecord]  # per model


def subsets(members: Iterable[str]) -> list[frozenset[str]]:
    """Every non-empty subset of ``members``."""
    items = sorted(members)
    return [frozenset(c) for size in range(1, len(items) + 1) for c in combinations(items, size)]


def choose_mix(
    models: Iterable[str],
    own_kept: Mapping[str, bool],
    ensemble_auc: Callable[[frozenset[str]], float],
    ensemble_auc_fp32: float,
    saving: Mapping[str, float],
) -> MixChoice:
    """The downward-closed set of models (each keeping its own AUC) that saves the most; ties go to the
    larger set, then the alphabetically first.

    ``ensemble_auc(S)``: the served ensemble's video AUC with the models of ``S`` in the variant
    precision and the rest in fp32. ``saving``: inference seconds per video the variant saves for a
    model (a negative saving counts as none: the service's timing would serve fp32 for it anyway).
    """
    names = sorted(models)
    measured: dict[frozenset[str], float] = {}

    def auc(group: frozenset[str]) -> float:
        if group not in measured:
            measured[group] = ensemble_auc(group)
        return measured[group]

    def keeps(group: frozenset[str]) -> bool:
        return within_auc_bar(auc(group) - ensemble_auc_fp32)

    def closed(group: frozenset[str]) -> bool:
        return all(keeps(part) for part in subsets(group))

    allowed = [n for n in names if own_kept.get(n, False)]
    best: frozenset[str] = frozenset()
    best_key = (0.0, 0)  # (saving, size); subsets() lists groups alphabetically, so ties keep the first
    for group in subsets(allowed):
        if not closed(group):
            continue
        key = (sum(max(0.0, saving.get(n, 0.0)) for n in group), len(group))
        if key > best_key:
            best, best_key = group, key

    records: dict[str, MixRecord] = {}
    for name in names:
        if name in best:
            records[name] = MixRecord(tuple(sorted(best)), auc(best))
            continue
        # Outside the set: the worst ensemble among the sets it would join (within the chosen set and
        # itself), which is beyond the bar whenever the model keeps its own AUC; otherwise its own
        # AUC already keeps it out.
        joined = [part for part in subsets(best | {name}) if name in part]
        worst = max(joined, key=lambda part: (abs(auc(part) - ensemble_auc_fp32), len(part)))
        records[name] = MixRecord(tuple(sorted(worst)), auc(worst))
    return MixChoice(tuple(sorted(best)), auc(best) if best else ensemble_auc_fp32, records)
