"""DFS_MIRROR_FACES: each crop is also scored mirrored, and its logit is the mean of the two.

A real MP4, BlazeFace and a real ONNX session of a random-init DCL (a network that is not
symmetric, so a mirrored face scores differently): the logits served with the setting must equal
the mean of the plain logits and the logits of the same crops flipped by hand.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.pipeline.analyse import AnalysisOptions, mirrored, mirrored_mean, video_logits
from service.pipeline.crops import extract_crops
from service.pipeline.engines import normalize
from service.serving import Serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_mirrored_flips_the_width_axis_of_frames_and_clips() -> None:
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    clip = np.stack([frame, frame + 1])
    assert np.array_equal(mirrored([frame])[0], frame[:, ::-1])
    assert np.array_equal(mirrored([clip])[0], clip[:, :, ::-1])
    assert np.array_equal(mirrored_mean(np.array([1.0, 3.0, 5.0, 7.0])), np.array([3.0, 5.0]))


@pytest.fixture(scope="module")
def dcl_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.__main__ import export_model

    folder = tmp_path_factory.mktemp("mirror") / "model_repository"
    export_model("dcl", folder, random_init=True, seed=5, model_options={"backbone": "mobilenetv2_100"})
    return folder


def _logits(repository: Path, video: Path, *, mirror: bool) -> tuple[np.ndarray, Serving, list]:
    async def run() -> tuple[np.ndarray, Serving, list]:
        serving = Serving(
            Settings(model_repository=repository, device="cpu", face_detector="blazeface", mirror_faces=mirror)
        )
        await serving.load()
        assert serving.ready, serving.reason
        try:
            options = AnalysisOptions.from_settings(serving.settings, ["dcl"], frames_per_track=4)
            result = await video_logits(video, "mirror", options, serving)
        finally:
            for model in serving.models.values():
                await model.batcher.stop()
        return result.logits["dcl"], serving, result.items

    return asyncio.run(run())


def test_mirror_faces_serves_the_mean_of_each_crop_and_its_mirror(
    dcl_repository: Path, videos: dict[str, Path]
) -> None:
    plain, serving, items = _logits(dcl_repository, videos["one_face"], mirror=False)
    both, _, mirror_items = _logits(dcl_repository, videos["one_face"], mirror=True)
    assert [item.frame_indices for item in items] == [item.frame_indices for item in mirror_items]
    assert len(plain) == len(items) >= 4

    spec = serving.models["dcl"].spec
    crops = extract_crops(videos["one_face"], items, {"dcl": spec}, max_frames=10_000)
    flipped = np.stack([crop[0] for crop in mirrored(crops)])
    by_hand = serving.models["dcl"].batcher.engine.run(normalize(spec, flipped)).reshape(-1)

    assert not np.allclose(by_hand, plain, atol=1e-3), "a random-init DCL should not be mirror-symmetric"
    np.testing.assert_allclose(both, (plain + by_hand) / 2, atol=1e-3)
