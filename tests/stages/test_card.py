"""The `card` stage: a card per artifact of dvc.yaml, holding the results in metrics/, the
same bytes from the same results, and found by `mnist-serve` through the artifact's meta."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from mnist_pipeline.evaluation import model_card
from mnist_pipeline.serving import server
from stages import card
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
ARTIFACTS = DVC["artifacts"]


def _args(out: Path, data: Path, profile: Path) -> list[str]:
    """The stage's command from dvc.yaml, with the prepared data, the drift profile (a DVC
    output, not in git) and the output moved."""
    argv = DVC["stages"]["card"]["cmd"].split()[3:]
    argv = [str(ROOT / a) if (ROOT / a).exists() and not a.startswith("-") else a for a in argv]
    argv[argv.index("--data") + 1] = str(data)
    argv[argv.index("--profile") + 1] = str(profile)
    argv[argv.index("--out") + 1] = str(out)
    argv[argv.index("--provenance") + 1] = str(out.parent / "provenance.json")
    return ["--params", str(ROOT / "params.yaml"), *argv]


def _meta(tmp_path: Path) -> Path:
    """data/prepared's meta.json, as `prepare` writes it for MNIST (no data files needed)."""
    data = tmp_path / "prepared"
    data.mkdir()
    meta = {"mean": 0.1307, "std": 0.3081, "sizes": {"train": 55000, "val": 5000, "test": 10000}}
    (data / "meta.json").write_text(json.dumps(meta))
    return data


def test_each_artifact_gets_a_card_with_the_accuracy_metrics_holds(
    tmp_path: Path, synthetic_profile: Path
) -> None:
    card.main(_args(tmp_path / "cards", _meta(tmp_path), synthetic_profile))
    cards = {p.stem: p.read_text() for p in (tmp_path / "cards").glob("*.md")}
    assert set(cards) == set(ARTIFACTS)
    stages = ("evaluate", "export", "quantize")
    metrics = {s: json.loads((ROOT / f"metrics/{s}.json").read_text()) for s in stages}
    want = {
        "lenet5": metrics["evaluate"]["test"]["acc"],
        "lenet5-onnx": metrics["export"]["dense"]["ort_test_acc"],
        "lenet5-pruned-onnx": metrics["export"]["pruned"]["ort_test_acc"],
        "lenet5-int8-onnx": metrics["quantize"]["dense"]["int8_test_acc"],
        "lenet5-pruned-int8-onnx": metrics["quantize"]["pruned"]["int8_test_acc"],
    }
    for name, acc in want.items():
        assert f"Test accuracy: **{acc:.2%}**" in cards[name], name
        for section in ("Intended use", "Input contract", "Training data", "Key params",
                        "Weakest classes", "Size", "Contract it passed", "Limitations",
                        "How to reproduce"):  # fmt: skip
            assert section in cards[name], (name, section)
        assert "photos of scenes" in cards[name] and "letters" in cards[name]
    assert "INT8" in cards["lenet5-pruned-int8-onnx"] and "Pruning" in cards["lenet5-pruned-onnx"]
    sha = hashlib.sha256(synthetic_profile.read_bytes()).hexdigest()
    entries = json.loads(synthetic_profile.read_text())["models"]  # {"lenet5.onnx": ...}
    for name, text in cards.items():  # every card names the profile, and its model's entry
        assert f"`drift_profile.json` (sha256 `{sha}`)" in text, name
        has_entry = ARTIFACTS[name]["path"].rsplit("/", 1)[-1] in entries
        assert ("This model's entry" in text) == has_entry, name
    assert "This model's entry, `lenet5.onnx`" in cards["lenet5-onnx"]


def test_the_cards_are_byte_stable(tmp_path: Path, synthetic_profile: Path) -> None:
    data = _meta(tmp_path)
    card.main(_args(tmp_path / "a" / "cards", data, synthetic_profile))
    time.sleep(1.1)  # another clock, another folder: the same bytes
    card.main(_args(tmp_path / "b" / "cards", data, synthetic_profile))
    for p in (tmp_path / "a" / "cards").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / "cards" / p.name).read_bytes()


def test_every_artifact_names_its_card_where_the_stage_writes_it() -> None:
    cmd = DVC["stages"]["card"]["cmd"].split()
    out = cmd[cmd.index("--out") + 1]
    assert DVC["stages"]["card"]["outs"] == [out]
    for name, artifact in ARTIFACTS.items():
        assert artifact["meta"]["card"] == f"{out}/{name}.md"
        assert artifact["desc"] and artifact["labels"]


def test_the_server_serves_the_card_of_the_artifact(onnx_model: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "models" / "cards").mkdir(parents=True)
    shutil.copy(onnx_model, repo / "models" / "digits.onnx")
    entry = {"path": "models/digits.onnx", "meta": {"card": "models/cards/digits.md"}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": {"digits": entry}}))
    (repo / "models" / "cards" / "digits.md").write_text("# Model card: digits\n")
    spec = server.ModelSpec(str(repo / "models" / "digits.onnx"), repo=str(repo))
    with TestClient(server.create_app(spec)) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        assert client.get("/model").json()["card"] is True
        got = client.get("/model/card")
    assert got.status_code == 200 and got.text == "# Model card: digits\n"
    assert got.headers["content-type"].startswith("text/markdown")


def test_weakest_classes_are_those_of_lowest_f1() -> None:
    rows = [{"class": str(c), "f1": f} for c, f in enumerate([0.99, 0.98, 0.97, 0.98])]
    assert [r["class"] for r in model_card.weakest(rows, 2)] == ["2", "1"]
