"""DFS_MODEL_VERSIONS: a model serves the version folder it is pinned to, not the highest one.

The repository is built from copies of the committed bundle's DCL folder (real ONNX files and
manifests), as versions 1 and 2 whose manifests differ only in their version number.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings, invalid_settings_message
from service.model_repository import RepositoryError, discover
from service.serving import Serving
from tests.conftest import REPO_ROOT

BUNDLED_DCL = REPO_ROOT / "model_repository" / "dcl" / "1"


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("versions") / "repo"
    for version in (1, 2):
        folder = repository / "dcl" / str(version)
        shutil.copytree(BUNDLED_DCL, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["version"] = version
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return repository


def test_the_highest_version_serves_unless_one_is_pinned(two_versions: Path) -> None:
    assert discover(two_versions)["dcl"].version == 2
    pinned = discover(two_versions, pins={"dcl": 1})["dcl"]
    assert pinned.version == 1 and pinned.folder == two_versions / "dcl" / "1"


def test_a_pin_to_a_missing_version_or_model_is_an_error_that_says_what_is_there(two_versions: Path) -> None:
    with pytest.raises(RepositoryError, match=r"pinned to version 7.*versions there: 1, 2"):
        discover(two_versions, pins={"dcl": 7})
    with pytest.raises(RepositoryError, match="pinned for models .* does not hold: ftcn"):
        discover(two_versions, pins={"ftcn": 2})


def test_the_service_loads_the_pinned_version(two_versions: Path) -> None:
    settings = Settings(model_repository=two_versions, device="cpu", face_detector="blazeface", model_versions="dcl:1")

    async def served_version() -> int:
        serving = Serving(settings)
        await serving.load()
        try:
            assert serving.ready, serving.reason
            return serving.models["dcl"].version.version
        finally:
            await serving.close()

    assert asyncio.run(served_version()) == 1


@pytest.mark.parametrize("value", ["dcl", "dcl:", "dcl:0", "dcl:two", ":2", "dcl:1,lib=2"])
def test_malformed_pins_are_refused_at_start_up(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(model_versions=value)
    assert invalid_settings_message(caught.value).splitlines()[1].strip().startswith("DFS_MODEL_VERSIONS:")
    assert Settings(model_versions=" dcl:1, ftcn : 3").model_version_pins == {"dcl": 1, "ftcn": 3}
