"""I2G blending: mask and image properties, sources from other identities, and real-only training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.blended import DEFORM_SIGMA, GRID, REFERENCE_EYE_DISTANCE, BlendRecipe, SourcePool, blend, face_mask
from training.data import load_index

MARKS = np.array([[100.0, 120.0], [156.0, 118.0], [128.0, 150.0], [106.0, 180.0], [150.0, 178.0]])


def test_mask_shape_range_and_recipe_variants() -> None:
    rng = np.random.default_rng(0)
    for _ in range(6):
        mask = face_mask(MARKS, 256, BlendRecipe.draw(rng))
        assert mask.shape == (256, 256) and mask.dtype == np.float32
        assert 0.0 <= mask.min() and mask.max() <= 1.0 and mask.max() > 0.5
        assert mask[0, 0] == 0 and mask[128, 140] > 0 or mask[118, 100] > 0  # something of the face is covered


def test_soft_edge_and_deformation_scale_with_the_face() -> None:
    """The reference's blur and deformation are sizes at its 256 px alignment: on one canvas, a face
    twice as large gets a twice as wide soft edge and a twice as large deformation."""
    still = BlendRecipe(hull=True, parts=(), displacement=np.zeros((GRID, GRID, 2)))
    rightwards = np.zeros((GRID, GRID, 2))
    rightwards[..., 0] = 1.0  # every grid point one sigma: the whole mask moves by DEFORM_SIGMA x face scale
    pushed = BlendRecipe(hull=True, parts=(), displacement=rightwards)

    def soft_width(mask: np.ndarray, row: float) -> int:
        values = mask[int(row)]
        return int(((values > 0.05) & (values < 0.95)).sum())

    def centre_x(mask: np.ndarray) -> float:
        return float((mask.sum(axis=0) * np.arange(mask.shape[1])).sum() / mask.sum())

    widths, shifts = [], []
    for factor in (1.0, 2.0):
        marks = MARKS * factor
        mask = face_mask(marks, 512, still)
        widths.append(soft_width(mask, marks[:, 1].mean()))
        shifts.append(centre_x(mask) - centre_x(face_mask(marks, 512, pushed)))
        eye_distance = np.linalg.norm(marks[1] - marks[0])
        assert shifts[-1] == pytest.approx(DEFORM_SIGMA * eye_distance / REFERENCE_EYE_DISTANCE, rel=0.05)
    assert 1.7 < widths[1] / widths[0] < 2.3, widths
    assert shifts[1] / shifts[0] == pytest.approx(2.0, rel=0.05)


def test_blend_changes_only_the_masked_region_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    target = np.full((256, 256, 3), 90, np.uint8)
    source = np.zeros((256, 256, 3), np.uint8)
    source[..., 0] = 200  # a differently coloured "face"
    source[::8] = 30  # with texture, so colour transfer cannot flatten it away
    recipe = BlendRecipe.draw(rng)
    image, mask = blend(target, MARKS, source, MARKS + 3, recipe)
    untouched = mask == 0
    assert untouched.any() and (~untouched).any()
    assert np.array_equal(image[untouched], target[untouched])
    assert np.abs(image[mask > 0.5].astype(int) - 90).max() > 10
    # colour transfer: inside the mask the mean moved to the target's
    assert abs(image[mask > 0.99].mean() - 90) < abs(source[mask > 0.99].mean() - 90)
    again, again_mask = blend(target, MARKS, source, MARKS + 3, recipe)
    assert np.array_equal(image, again) and np.array_equal(mask, again_mask)
    other = BlendRecipe.draw(np.random.default_rng(2))
    assert not np.array_equal(face_mask(MARKS, 256, other), mask)


def test_sources_come_from_other_identities(crops_dataset: Path) -> None:
    records = load_index(crops_dataset)
    pool = SourcePool(records)
    for record in pool.records:
        found = pool.nearest(MARKS, record.identity)
        if found is not None:
            assert found[0].identity != record.identity
    lonely = SourcePool(records[:1])
    assert lonely.nearest(MARKS, records[0].identity) is None


@pytest.mark.slow
def test_real_only_pcl_run_drives_the_loss_down(shared_data: Path, tmp_path: Path) -> None:
    from training.preprocess import main as preprocess
    from training.train import main as train

    photos = tmp_path / "photos" / "real"
    photos.mkdir(parents=True)
    for name in (
        "facerec_obama.jpg",
        "facerec_biden.jpg",
        "facerec_two_people.jpg",
        "facenet_angelina_jolie.jpg",
        "facenet_paul_rudd.jpg",
        "facerec_alex-lacamoire.png",
        "facerec_lin-manuel-miranda.png",
        "facenet_kate_siegel.jpg",
    ):
        shutil.copy(shared_data / "photos" / name, photos / name)
    assert preprocess(["--input", str(photos.parent), "--output", str(tmp_path / "crops"), "--crop-size", "256"]) == 0
    run = tmp_path / "run"
    assert (
        train(
            [
                "--method",
                "pcl_i2g",
                "--data",
                str(tmp_path / "crops"),
                "--output",
                str(run),
                "--fakes",
                "blended",
                "--batch-size",
                "8",
                "--epochs",
                "12",
                "--max-steps",
                "24",
                "--lr",
                "5e-4",
                "--workers",
                "0",
                "--val-fraction",
                "0",
                "--no-tensorboard",
            ]
        )
        == 0
    )
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) >= 16
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.7 * first, f"loss did not drop: {first:.3f} -> {last:.3f}"


def test_blended_clips_for_real_only_ftcn(crops_dataset: Path) -> None:
    from models import get_spec
    from training.blended import BlendedClipDataset

    records = load_index(crops_dataset)
    dataset = BlendedClipDataset(records, get_spec("ftcn"), stride=32, max_clips_per_track=1)
    assert dataset.labels()[:2] == [0, 1] and len(dataset) == 2 * len(dataset.clips)
    real, fake = dataset[0], dataset[1]
    assert real.label == 0 and fake.label == 1
    assert fake.track == real.track != "", "a blended twin scores per face track like its real clip"
    assert real.image.shape == fake.image.shape == (3, 32, 224, 224)
    assert float(real.mask.max()) == 0.0 and 0.0 < float(fake.mask.mean()) < 1.0
    assert not np.allclose(real.image.numpy(), fake.image.numpy())
    again = dataset[1]
    assert np.array_equal(again.image.numpy(), fake.image.numpy()), "blends are deterministic under the seed"


def test_blended_clips_flip_frames_and_mask_together(crops_dataset: Path) -> None:
    from models import get_spec
    from training.blended import BlendedClipDataset

    records = load_index(crops_dataset)
    spec = get_spec("ftcn")
    flipping = BlendedClipDataset(records, spec, stride=32, max_clips_per_track=1, flip=True)
    plain = BlendedClipDataset(records, spec, stride=32, max_clips_per_track=1, flip=False)
    seen = {"real": set(), "fake": set()}
    for epoch in range(8):
        flipping.set_epoch(epoch)
        plain.set_epoch(epoch)
        for kind, index in (("real", 0), ("fake", 1)):
            mirrored, upright = flipping[index], plain[index]
            if torch.equal(mirrored.image, upright.image):
                assert torch.equal(mirrored.mask, upright.mask)
                seen[kind].add(False)
                continue
            # the whole clip: every frame and the mask, mirrored together
            assert torch.equal(mirrored.image, upright.image.flip(-1))
            assert torch.equal(mirrored.mask, upright.mask.flip(-1))
            if kind == "fake":
                assert not torch.equal(upright.mask, upright.mask.flip(-1)), "an asymmetric mask shows the flip"
            seen[kind].add(True)
        if all(len(v) == 2 for v in seen.values()):
            break
    assert seen == {"real": {False, True}, "fake": {False, True}}, "each clip flips with p 0.5"


def test_flicker_makes_a_blended_clip_drift_from_frame_to_frame(crops_dataset: Path) -> None:
    """``flicker``: a frame-wise forgery's temporal incoherence, the signal a fully temporal network can see.
    Without it, consecutive frames of a blend differ from each other only as much as the real clip's do."""
    from models import get_spec
    from training.blended import BlendedClipDataset

    records = load_index(crops_dataset)
    spec = get_spec("ftcn")

    def frame_to_frame(dataset: BlendedClipDataset) -> tuple[float, float]:
        """Mean |frame t+1 - frame t| of the blended twin and of its real clip, same seed and source."""
        real, fake = dataset[0].image.numpy(), dataset[1].image.numpy()
        return float(np.abs(np.diff(fake, axis=1)).mean()), float(np.abs(np.diff(real, axis=1)).mean())

    coherent = BlendedClipDataset(records, spec, stride=32, max_clips_per_track=1, flip=False)
    flickering = BlendedClipDataset(records, spec, stride=32, max_clips_per_track=1, flip=False, flicker=1.0)
    coherent_fake, real = frame_to_frame(coherent)
    flicker_fake, real_again = frame_to_frame(flickering)
    assert real_again == real, "the real clip is untouched by flicker"
    print(f"frame-to-frame |diff|: real {real:.4f}, coherent blend {coherent_fake:.4f}, flicker {flicker_fake:.4f}")
    assert flicker_fake > 1.1 * coherent_fake, (flicker_fake, coherent_fake, real)
    first = flickering[1]
    assert first.label == 1
    assert torch.equal(first.image, flickering[1].image), "the drift is drawn from the seeded rng: deterministic"


def test_a_flicker_range_gives_each_clip_its_own_drift_inside_the_range(crops_dataset: Path) -> None:
    """``flicker_min`` (``--blend-flicker-min``): each blended clip drifts by its own amount from the range,
    subtle and strong alike, drawn from the clip's seeded rng; without a range every clip gets ``flicker``."""
    from models import get_spec
    from training.blended import BlendedClipDataset

    records = load_index(crops_dataset)
    spec = get_spec("ftcn")
    ranged = BlendedClipDataset(records, spec, stride=32, max_clips_per_track=1, flicker=1.0, flicker_min=0.2)
    fixed = BlendedClipDataset(records, spec, stride=32, max_clips_per_track=1, flicker=1.0)
    amounts = [ranged.clip_flicker(np.random.default_rng(seed)) for seed in range(64)]
    assert all(0.2 <= a <= 1.0 for a in amounts), amounts
    assert min(amounts) < 0.4 and max(amounts) > 0.8, "the draws span the range"
    assert ranged.clip_flicker(np.random.default_rng(3)) == amounts[3], "seeded: the same clip drifts the same"
    assert {fixed.clip_flicker(np.random.default_rng(seed)) for seed in range(8)} == {1.0}
    assert ranged.clip_flicker(None) == 0.0, "no rng (validation): no drift"
    sample = ranged[1]
    assert sample.label == 1 and torch.equal(sample.image, ranged[1].image), "deterministic per index"


def test_degraded_clips_lose_detail_in_both_classes_and_degrade_zero_changes_nothing(crops_dataset: Path) -> None:
    """``degrade`` (FTCN's ``--degrade``): the real clip and its blended twin are both re-compressed and
    softened, so sharpness and compression carry no label; at 0 every clip is exactly as before."""
    from models import get_spec
    from training.blended import BlendedClipDataset

    records = load_index(crops_dataset)
    spec = get_spec("ftcn", input_size=96, width=0.25)

    def detail(image: torch.Tensor) -> float:
        """Mean |horizontal gradient|: what downscaling and JPEG take away."""
        return float(image.diff(dim=-1).abs().mean())

    plain = BlendedClipDataset(records, spec, stride=32, max_clips_per_track=1, flip=False)
    untouched = BlendedClipDataset(records, spec, stride=32, max_clips_per_track=1, flip=False, degrade=0.0)
    degraded = BlendedClipDataset(records, spec, stride=32, max_clips_per_track=1, flip=False, degrade=1.0)
    for index in (0, 1):  # the real clip, then its blended twin
        assert torch.equal(plain[index].image, untouched[index].image)
        assert degraded[index].label == plain[index].label
        assert detail(degraded[index].image) < 0.95 * detail(plain[index].image), index
    assert torch.equal(degraded[1].image, degraded[1].image), "deterministic under the seed"


def test_a_self_blend_alters_the_face_only_inside_its_mask_without_colour_matching(crops_dataset: Path) -> None:
    """``--blend-source self``: the fake is the same face, its copy shifted in colour or sharpness
    inside a blended mask; outside the mask every pixel is the real crop's."""
    from training.blended import SelfBlendedFakes, altered_copy

    record = next(r for r in load_index(crops_dataset) if r.label == 0)
    image = record.image(0)
    rng = np.random.default_rng(3)
    copy = altered_copy(image, rng)
    assert copy.shape == image.shape and copy.dtype == np.uint8 and not np.array_equal(copy, image)
    assert np.abs(copy.astype(int) - image.astype(int)).mean() < 40  # slight, not another face
    maker = SelfBlendedFakes()
    changed = 0
    for seed in range(6):
        fake, mask = maker(record, 0, np.random.default_rng(seed))
        assert fake.shape == image.shape and mask.shape == image.shape[:2]
        assert np.array_equal(fake[mask == 0], image[mask == 0])
        inside = mask > 0.5
        if inside.any():
            changed += int(np.abs(fake[inside].astype(int) - image[inside].astype(int)).mean() > 1)
        again, again_mask = maker(record, 0, np.random.default_rng(seed))
        assert np.array_equal(fake, again) and np.array_equal(mask, again_mask)
    assert changed >= 4


def test_blend_source_option_picks_the_fake_maker(crops_dataset: Path) -> None:
    from training.blended import BlendedFakes, MixedFakes, SelfBlendedFakes
    from training.methods import method_class
    from training.train import parse_args

    records = load_index(crops_dataset)
    for choice, kind in [("other", BlendedFakes), ("self", SelfBlendedFakes), ("mixed", MixedFakes)]:
        argv = ["--method", "dcl", "--fakes", "both", "--blend-source", choice, "--data", str(crops_dataset)]
        options = parse_args([*argv, "--output", "unused"])
        method = method_class("dcl")(options)
        assert isinstance(method.fake_maker(records), kind), choice


def test_self_blended_clips_need_no_other_identity_and_change_only_the_masked_face(crops_dataset: Path) -> None:
    """FTCN's ``--blend-source self``: a clip blended with an altered copy of itself is a fake (label 1)
    even where no other identity exists to blend from, and outside its mask every pixel of every frame
    is the real clip's; the blend is deterministic under the seed, and ``mixed`` makes both kinds."""
    from models import get_spec
    from training.blended import BlendedClipDataset

    records = load_index(crops_dataset)
    reals = [r for r in records if r.label == 0]
    one_identity = [r for r in reals if r.identity == reals[0].identity]
    spec = get_spec("ftcn", input_size=96, width=0.25)
    alone = BlendedClipDataset(one_identity, spec, stride=32, max_clips_per_track=1, flip=False)
    assert alone[1].label == 0, "I2G needs another identity: without one the twin stays real"
    selfish = BlendedClipDataset(one_identity, spec, stride=32, max_clips_per_track=1, flip=False, blend_source="self")
    real, fake = selfish[0], selfish[1]
    assert fake.label == 1 and fake.video.endswith("#blended") and fake.track == real.track
    assert 0.0 < float(fake.mask.mean()) < 1.0
    outside = (fake.mask == 0).expand_as(fake.image)  # (3, T, S, S): the mean mask is 0 in every frame there
    inside = (fake.mask > 0.5).expand_as(fake.image)
    assert outside.any() and inside.any()
    assert float((fake.image - real.image)[outside].abs().max()) < 1e-5
    assert float((fake.image - real.image)[inside].abs().mean()) > 0.01
    assert torch.equal(selfish[1].image, fake.image), "deterministic under the seed"
    with pytest.raises(ValueError, match="blend_source"):
        BlendedClipDataset(one_identity, spec, stride=32, max_clips_per_track=1, blend_source="nobody")

    # mixed: either maker per clip; with one identity only the self-blends become fakes
    mixed = BlendedClipDataset(one_identity, spec, stride=32, max_clips_per_track=1, flip=False, blend_source="mixed")
    labels = []
    for epoch in range(16):
        mixed.set_epoch(epoch)
        labels.append(mixed[1].label)
    assert 0 < sum(labels) < len(labels), labels


def test_ftcn_takes_the_blend_source_option(crops_dataset: Path) -> None:
    from training.blended import BlendedClipDataset
    from training.methods import method_class
    from training.train import parse_args

    records = load_index(crops_dataset)
    argv = ["--method", "ftcn", "--fakes", "blended", "--blend-source", "self", "--width", "0.25"]
    options = parse_args([*argv, "--input-size", "96", "--data", str(crops_dataset), "--output", "unused"])
    method = method_class("ftcn")(options)
    train_set, _ = method.datasets(records, records)
    assert isinstance(train_set, BlendedClipDataset) and train_set.blend_source == "self"
