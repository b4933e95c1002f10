"""export.precision_mix: which models may serve a faster precision together."""

from __future__ import annotations

from export.manifest import Variant
from export.precision_mix import choose_mix, subsets

FP32 = 0.879


def ensemble_of(harm: dict[frozenset[str], float]):  # noqa: ANN201 - a test's callable
    """An ensemble AUC that drops by ``harm`` for a set holding one of its keys (a pair that reorders
    videos only together, say), else stays at fp32's."""

    def auc(group: frozenset[str]) -> float:
        return FP32 - sum(drop for members, drop in harm.items() if members <= group)

    return auc


def test_the_set_that_saves_most_is_chosen_when_every_subset_keeps_the_ensemble() -> None:
    names = ["advgame", "dcl", "ftcn", "lib", "pcl_i2g"]
    own = dict.fromkeys(names, True)
    # advgame and lib together reorder two video pairs; either alone harms nothing
    auc = ensemble_of({frozenset({"advgame", "lib"}): 0.03})
    saving = {"advgame": 0.10, "dcl": 0.05, "ftcn": 0.20, "lib": 0.15, "pcl_i2g": 0.05}
    mix = choose_mix(names, own, auc, FP32, saving)
    assert mix.chosen == ("dcl", "ftcn", "lib", "pcl_i2g")  # lib saves more than advgame
    assert abs(mix.ensemble_auc - FP32) < 1e-12
    # advgame's record is the set it would join that breaks the bar, so the service keeps it out
    record = mix.records["advgame"]
    assert {"advgame", "lib"} <= set(record.together) and abs(record.ensemble_auc - (FP32 - 0.03)) < 1e-12
    assert mix.records["ftcn"].together == mix.chosen


def test_a_set_with_a_harmful_subset_is_not_chosen_even_if_the_whole_set_reads_well() -> None:
    names = ["a", "b", "c"]
    own = dict.fromkeys(names, True)

    def auc(group: frozenset[str]) -> float:  # {a, b} harms, {a, b, c} happens to read fine again
        return FP32 - 0.05 if group == frozenset({"a", "b"}) else FP32

    mix = choose_mix(names, own, auc, FP32, {"a": 1.0, "b": 1.0, "c": 0.1})
    assert mix.chosen in {("a", "c"), ("b", "c")}
    assert all(abs(auc(part) - FP32) <= 0.01 for part in subsets(mix.chosen))


def test_a_model_whose_own_auc_moved_is_never_chosen_and_no_set_means_none() -> None:
    own = {"a": False, "b": True}
    mix = choose_mix(["a", "b"], own, ensemble_of({frozenset({"b"}): 0.02}), FP32, {"a": 1.0, "b": 1.0})
    assert mix.chosen == () and mix.ensemble_auc == FP32
    assert set(mix.records) == {"a", "b"}
    assert abs(mix.records["b"].ensemble_auc - (FP32 - 0.02)) < 1e-12


def test_the_records_make_the_services_per_model_check_pass_exactly_for_the_chosen_set() -> None:
    names = ["advgame", "dcl", "ftcn", "lib", "pcl_i2g"]
    own = {**dict.fromkeys(names, True), "dcl": False}
    auc = ensemble_of({frozenset({"advgame", "pcl_i2g"}): 0.02, frozenset({"ftcn", "lib", "pcl_i2g"}): 0.015})
    saving = dict.fromkeys(names, 0.1)
    mix = choose_mix(names, own, auc, FP32, saving)
    own_auc = {n: (0.70 if own[n] else 0.68) for n in names}
    for name, record in mix.records.items():
        variant = Variant(
            file="model.onnx",
            precision="bf16",
            auc_fp32=0.70,
            auc=own_auc[name],
            ensemble_auc_fp32=FP32,
            ensemble_auc=record.ensemble_auc,
            ensemble_with=list(record.together),
        )
        assert variant.quality_kept() == (name in mix.chosen), (name, record)
    assert len(mix.chosen) == 3  # e.g. advgame, ftcn, lib: the best a downward-closed set can do here
