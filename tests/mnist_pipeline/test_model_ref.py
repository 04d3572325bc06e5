"""A model named by its registry version or stage is fetched as it was registered, whatever
the working tree holds; a file path is used as it is; a bad name is a usage error."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient

from mnist_pipeline.errors import UsageError
from mnist_pipeline.serving import model_ref, predict, server
from pipelines.registry import register
from testing.scratch_repo import git, registry_repo

ARTIFACTS = (
    "artifacts:\n  digits-onnx:\n    path: models/m.onnx\n    type: model\n"
    "    meta: {drift_profile: models/p.json}\n"
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, onnx_model: Path, synthetic_profile: Path
) -> dict[str, str]:
    """A git + DVC repo with two registered versions of `digits-onnx`, v0.1.0 in `prod`, each
    with its drift profile: {version: sha256 of its file, "profile " + version: of its profile}.
    The working tree ends up holding a third, unregistered file."""
    from gto import api

    root = tmp_path_factory.mktemp("registry")
    with registry_repo(root, ARTIFACTS) as repo:
        model = onnx.load(str(onnx_model))
        shas = {}
        for version in ("v0.1.0", "v0.2.0", "unregistered"):
            onnx.helper.set_model_props(model, {"version_note": version})
            onnx.save(model, str(root / "models/m.onnx"))
            profile = synthetic_profile.read_bytes().replace(
                b"{", f'{{"v": "{version}", '.encode(), 1
            )
            (root / "models/p.json").write_bytes(profile)
            repo.add([str(root / "models/m.onnx"), str(root / "models/p.json")])
            git(root, "add", "-A")
            git(root, "commit", "-q", "-m", version)
            if version != "unregistered":
                assert register(root, "digits-onnx", "minor", version).version == version
            shas[version] = _sha(root / "models/m.onnx")
            shas[f"profile {version}"] = _sha(root / "models/p.json")
        api.assign(str(root), "digits-onnx", stage="prod", version="v0.1.0")
    shas["root"] = str(root)
    return shas


@pytest.mark.parametrize(
    ("spec", "version", "stage"),
    [
        ("digits-onnx@v0.1.0", "v0.1.0", None),
        ("digits-onnx#prod", "v0.1.0", "prod"),
        ("digits-onnx@latest", "v0.2.0", None),
        ("digits-onnx", "v0.2.0", None),
    ],
)
def test_a_reference_fetches_the_registered_file(
    registry: dict[str, str], tmp_path: Path, spec: str, version: str, stage: str | None
) -> None:
    source = model_ref.resolve(spec, registry["root"], tmp_path)
    assert (source.artifact, source.version, source.stage) == ("digits-onnx", version, stage)
    assert _sha(source.path) == registry[version] != registry["unregistered"]
    assert source.path.is_relative_to(tmp_path / "digits-onnx" / version)
    tag_commit = git(Path(registry["root"]), "rev-parse", f"digits-onnx@{version}^{{commit}}")
    assert source.commit == tag_commit.strip()
    # Its drift profile, as registered with it, beside it: where mnist-serve looks.
    assert _sha(source.path.parent / "drift_profile.json") == registry[f"profile {version}"]


def test_the_server_and_predict_say_which_version_they_run(
    registry: dict[str, str], tmp_path: Path, digits: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = model_ref.resolve("digits-onnx#prod", registry["root"], tmp_path)
    with TestClient(server.create_app(source)) as client:  # its lifespan loads the model
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        card = client.get("/model").json()
    assert (card["name"], card["version"], card["stage"]) == ("digits-onnx", "v0.1.0", "prod")
    assert card["sha256"] == registry["v0.1.0"] and card["metadata"]["version_note"] == "v0.1.0"
    assert card["drift_profile"]["file"] == "drift_profile.json"

    image = tmp_path / "d.png"
    from PIL import Image

    Image.fromarray(digits[0]).save(image)
    monkeypatch.chdir(registry["root"])  # --repo defaults to this directory
    argv = ["--model", "digits-onnx@v0.2.0", "--cache-dir", str(tmp_path / "c"), str(image)]
    assert predict.main(argv) == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("digits-onnx@v9.9.9", "not a registered version"),
        ("digits-onnx#staging", "no version of digits-onnx is in stage 'staging'"),
        ("no-such-model", "no-such-model"),
    ],
)
def test_a_bad_reference_is_a_usage_error(
    registry: dict[str, str], tmp_path: Path, spec: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        model_ref.resolve(spec, registry["root"], tmp_path)


def test_paths_are_files_not_references(onnx_model: Path, tmp_path: Path) -> None:
    assert model_ref.resolve(str(onnx_model)) == model_ref.ModelSource(onnx_model)
    assert not model_ref.is_reference("missing.onnx")  # a file that is not there
    assert not model_ref.is_reference("models/lenet5")
    assert model_ref.is_reference("lenet5-onnx") and model_ref.is_reference("m@v1.0.0")
    assert server.main(["--model", "missing.onnx"]) == 2
    no_registry = ["--model", "m@v1.0.0", "--repo", str(tmp_path)]
    assert server.main([*no_registry, "--cache-dir", str(tmp_path / "c")]) == 2


def test_a_corrupt_cache_object_is_refused_and_the_old_model_keeps_serving(
    registry: dict[str, str], tmp_path: Path
) -> None:
    """A flipped byte in the DVC cache object of a registered file: DVC fetches it as it is,
    so the check against the tagged commit's lock refuses it, and a reload keeps the old."""
    import asyncio
    import shutil

    from mnist_pipeline.serving import served_model

    root = tmp_path / "repo"
    shutil.copytree(registry["root"], root)
    spec = served_model.ModelSpec("digits-onnx@v0.1.0", str(root), tmp_path / "fetched")
    slot = served_model.ModelSlot(
        spec,
        None,
        lambda source, data: served_model.load(source, data, 1, 0, lambda s: None, str(root)),  # type: ignore[arg-type,return-value]
        lambda old, new: None,
        lambda reason: None,
    )
    assert asyncio.run(slot.reload()) and slot.current is not None
    serving = slot.current.info.sha256
    md5 = git(root, "show", "digits-onnx@v0.1.0:models/m.onnx.dvc").split("md5: ")[1].split()[0]
    obj = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0x01  # an ONNX file that still loads: only the hash tells
    obj.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=f"records {md5}: the copy in the DVC cache or remote"):
        model_ref.resolve("digits-onnx@v0.1.0", str(root), tmp_path / "other")
    assert not asyncio.run(slot.reload())  # SIGHUP's path
    assert slot.current.info.sha256 == serving


def test_a_corrupt_drift_profile_is_refused(registry: dict[str, str], tmp_path: Path) -> None:
    """The profile fetched with a version is checked against the tagged commit's record too."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(registry["root"], root)
    md5 = git(root, "show", "digits-onnx@v0.2.0:models/p.json.dvc").split("md5: ")[1].split()[0]
    obj = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes().replace(b"v0.2.0", b"v0.2.1", 1))
    with pytest.raises(UsageError, match=f"drift profile models/p.json has md5 .*records {md5}"):
        model_ref.resolve("digits-onnx@v0.2.0", str(root), tmp_path / "fetched")
