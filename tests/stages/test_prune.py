"""Pruning: structured removes channels (fewer params and MACs, a plain LeNet5 that loads
without torch-pruning); unstructured zeroes weights and says so; the stage's I/O contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mnist_pipeline.data.dataset import load_split
from mnist_pipeline.model import (
    LeNet5,
    Widths,
    count_params,
    load_model,
    save_model,
    widths_of,
)
from mnist_pipeline.params.schema import Params, parse_params
from mnist_pipeline.pruning import rounds as prune_rounds
from mnist_pipeline.pruning import structured as pruning
from stages import prune
from tests.conftest import ROOT, tiny_params_dict
from tests.stage_runs import output_hashes, stage_argv
from tests.stages.conftest import plant_checkpoint

# torch-pruning's count for LeNet5() on one 28x28 digit: conv and linear MACs plus one op per
# ReLU and pooling output (the ReLUs come after the pools, on 6x14x14 and 16x5x5 outputs).
DENSE_MACS = 431_122


def _structured(params: Params, **kw: object):
    return params.prune.structured.model_copy(update=kw)


def lenet_params(w: Widths) -> int:
    """Parameters of a LeNet5 with widths `w`, counted by hand."""
    return (
        (1 * 25 + 1) * w.conv1
        + (w.conv1 * 25 + 1) * w.conv2
        + (w.conv2 * 25 + 1) * w.fc1
        + (w.fc1 + 1) * w.fc2
        + (w.fc2 + 1) * 10
    )


def test_structured_step_removes_channels_and_keeps_the_outputs(
    trained_model: Path, prepared: Path, tiny_params: Params
) -> None:
    dense, _ = load_model(trained_model)
    net = pruning.plain_copy(dense)
    pruner = pruning.make_structured_pruner(net, _structured(tiny_params, ratio=0.5), rounds=1)
    pruning.structured_step(pruner, net, tiny_params.prune.structured, train=None)

    w = widths_of(net)
    assert w == Widths(conv1=3, conv2=8, fc1=60, fc2=42)
    # The layers really shrank, input and output sizes included.
    assert net.features[0].weight.shape == (3, 1, 5, 5)
    assert net.features[3].weight.shape == (8, 3, 5, 5)
    assert net.classifier[1].weight.shape == (60, 8 * 25)
    assert net.classifier[5].weight.shape == (10, 42)
    assert count_params(net) == lenet_params(w) < count_params(dense) * 0.26
    assert pruning.count_macs(dense) == DENSE_MACS
    assert pruning.count_macs(net) < DENSE_MACS / 3
    # Kept conv1 filters are original filters, not new ones.
    kept = net.features[0].weight.detach()
    orig = dense.features[0].weight.detach()
    assert all(any(torch.equal(k, o) for o in orig) for k in kept)
    # It still classifies.
    test = load_split(prepared, "test")
    assert net(test.images[:5]).shape == (5, 10)


def test_iterative_rounds_reach_the_ratio_in_equal_steps(tiny_params: Params) -> None:
    net = LeNet5()
    pruner = pruning.make_structured_pruner(net, _structured(tiny_params, ratio=0.5), rounds=2)
    params = tiny_params.prune.structured
    pruning.structured_step(pruner, net, params, train=None)
    assert widths_of(net) == Widths(conv1=4, conv2=12, fc1=90, fc2=63)
    pruning.structured_step(pruner, net, params, train=None)
    assert widths_of(net) == Widths(conv1=3, conv2=8, fc1=60, fc2=42)


def test_taylor_importance_uses_gradients(prepared: Path, tiny_params: Params) -> None:
    net = LeNet5()
    pruner = pruning.make_structured_pruner(
        net, _structured(tiny_params, importance="taylor"), rounds=1
    )
    train = load_split(prepared, "train")
    pruning.structured_step(
        pruner, net, _structured(tiny_params, importance="taylor", taylor_batches=2), train
    )
    assert widths_of(net) == Widths(conv1=2, conv2=7, fc1=57, fc2=40)  # params.yaml's 0.52
    assert all(p.grad is None for p in net.parameters())


def test_pruned_model_loads_without_torch_pruning(tmp_path: Path, tiny_params: Params) -> None:
    net = LeNet5()
    pruner = pruning.make_structured_pruner(net, _structured(tiny_params, ratio=0.5), rounds=1)
    pruning.structured_step(pruner, net, tiny_params.prune.structured, train=None)
    x = torch.rand(4, 1, 28, 28)
    expected = net.eval()(x)
    save_model(pruning.plain_copy(net), tmp_path / "p.pt", meta={"mean": 0.1, "std": 0.3})
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch; sys.modules['torch_pruning'] = None  # importing it now fails\n"
        "from pathlib import Path\n"
        "from mnist_pipeline.model import load_model, widths_of\n"
        f"net, meta = load_model(Path({str(tmp_path / 'p.pt')!r}))\n"
        f"y = net(torch.load({str(tmp_path / 'x.pt')!r}))\n"
        f"torch.save(y, {str(tmp_path / 'y.pt')!r})\n"
        "print(widths_of(net), meta['mean'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Widths(conv1=3, conv2=8, fc1=60, fc2=42) 0.1" in out.stdout
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-6)


def test_unstructured_steps_zero_the_smallest_weights(tiny_params: Params) -> None:
    net = LeNet5()
    n = sum(m.weight.numel() for m in pruning.weight_layers(net))
    pruning.unstructured_step(net, 0.4)
    assert pruning.sparsity(net) == pytest.approx(round(0.4 * n) / n)
    zeroed = [m.weight == 0 for m in pruning.weight_layers(net)]
    pruning.unstructured_step(net, 0.8)
    assert pruning.sparsity(net) == pytest.approx(round(0.8 * n) / n)
    # Weights zeroed in the first round stay zero.
    layers = pruning.weight_layers(net)
    assert all((m.weight[z] == 0).all() for m, z in zip(layers, zeroed, strict=True))
    # Global magnitude: every surviving weight is at least as large as every pruned one.
    orig = [m.weight_orig.detach().abs() for m in pruning.weight_layers(net)]
    masks = [m.weight_mask.bool() for m in pruning.weight_layers(net)]
    kept_min = min(o[k].min() for o, k in zip(orig, masks, strict=True))
    pruned_max = max(o[~k].max() for o, k in zip(orig, masks, strict=True))
    assert kept_min >= pruned_max
    pruning.make_permanent(net)
    assert not any(hasattr(m, "weight_orig") for m in pruning.weight_layers(net))
    assert widths_of(pruning.plain_copy(net)) == Widths()  # same shapes: nothing is smaller


def _prune_argv(run_dir: Path, trained_model: Path, prepared: Path, raw: dict) -> list[str]:
    """dvc.yaml's arguments for the stage, with `raw` as params and the outputs in `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = run_dir / "params.yaml"
    return stage_argv("prune", params, run_dir, model=trained_model, data=prepared)


def _run_main(tmp_path: Path, trained_model: Path, prepared: Path, raw: dict) -> dict:
    prune.main(_prune_argv(tmp_path, trained_model, prepared, raw))
    assert json.loads((tmp_path / "measurements/prune.json").read_text())["finetune_time_s"] > 0
    return json.loads((tmp_path / "metrics/prune.json").read_text())


def test_main_structured_is_smaller_and_keeps_accuracy(
    tmp_path: Path, trained_model: Path, prepared: Path
) -> None:
    raw = tiny_params_dict()
    raw["prune"]["finetune"]["epochs"] = 4  # 15 steps an epoch on the synthetic data
    m = _run_main(tmp_path, trained_model, prepared, raw)
    assert m["ratio"]["params"] <= 0.25 and m["ratio"]["macs"] <= 0.25  # the targets
    assert m["pruned"]["file_bytes"] < m["dense"]["file_bytes"] / 3
    assert m["dense"]["params"] == 61_706 and m["dense"]["macs"] == DENSE_MACS
    # Fine-tuning wins back what pruning lost (the synthetic data may lose nothing to win back).
    assert m["round1"]["test_acc_finetuned"] >= m["round1"]["test_acc_pruned"]
    assert m["pruned"]["test_acc"] >= 0.97 and m["acc_drop_points"] <= 3
    assert m["acc_drop_points"] == pytest.approx(
        (m["dense"]["test_acc"] - m["pruned"]["test_acc"]) * 100, abs=1e-3
    )
    assert "val_acc" in m["round1"]
    net, meta = load_model(tmp_path / "models/lenet5_pruned.pt")
    _, dense_meta = load_model(trained_model)
    assert widths_of(net) == Widths(conv1=2, conv2=7, fc1=57, fc2=40)
    # The normalization stays with the model, so `export` can put it in the graph.
    assert (meta["mean"], meta["std"]) == (dense_meta["mean"], dense_meta["std"])
    assert meta["prune_method"] == "structured"


def test_main_unstructured_reports_sparsity_honestly(
    tmp_path: Path, trained_model: Path, prepared: Path
) -> None:
    raw = tiny_params_dict()
    raw["prune"]["method"] = "unstructured"
    raw["prune"]["unstructured"]["sparsity"] = 0.8
    raw["prune"]["finetune"]["epochs"] = 4
    m = _run_main(tmp_path, trained_model, prepared, raw)
    p, d = m["pruned"], m["dense"]
    assert p["sparsity"] == pytest.approx(0.8, abs=1e-3)
    # Same shapes: as many parameters and MACs, the same file size; only gzip shrinks.
    assert p["params"] == d["params"] and p["macs"] == d["macs"]
    assert p["nonzero_params"] < 0.25 * d["params"]
    assert p["gzip_bytes"] < 0.5 * d["gzip_bytes"]
    assert abs(p["file_bytes"] - d["file_bytes"]) < 0.01 * d["file_bytes"]
    assert p["test_acc"] >= 0.97
    assert m["round1"]["nonzero_params"] == p["nonzero_params"]  # masks counted while attached
    net, _ = load_model(tmp_path / "models/lenet5_pruned.pt")  # permanent: a plain state dict
    assert pruning.sparsity(net) == pytest.approx(0.8, abs=1e-3)


def test_bad_params_fail_before_any_output(
    tmp_path: Path, trained_model: Path, prepared: Path
) -> None:
    raw = tiny_params_dict()
    raw["prune"]["structured"]["ratio"] = 1.5
    with pytest.raises(Exception, match=r"prune\.structured\.ratio"):
        _run_main(tmp_path, trained_model, prepared, raw)
    assert not (tmp_path / "models/lenet5_pruned.pt").exists()
    with pytest.raises(Exception, match=r"prune\.method"):
        parse_params({**tiny_params_dict(), "prune": {**raw["prune"], "method": "magic"}})


def _resumed_after(run_dir: Path) -> int | None:
    return json.loads((run_dir / "provenance/prune.json").read_text())["resumed_after_round"]


def test_a_killed_prune_resumes_after_its_last_round_and_ends_the_same(
    tmp_path: Path, trained_model: Path, prepared: Path
) -> None:
    raw = tiny_params_dict()
    raw["prune"].update(rounds=3)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    prune.main(_prune_argv(whole, trained_model, prepared, raw))
    assert _resumed_after(whole) is None

    argv = _prune_argv(killed, trained_model, prepared, raw)
    done = subprocess.run(
        [sys.executable, "-m", "stages.prune", *argv],
        cwd=ROOT,
        env={**os.environ, prune_rounds.FAIL_ENV: "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-2000:]  # SIGKILLed once round 1 was saved
    assert "round 1/3" in done.stderr and "round 2/3" not in done.stderr
    assert not (killed / "models/lenet5_pruned.pt").exists()

    prune.main(argv)  # the retry
    assert _resumed_after(killed) == 1
    assert output_hashes(killed, ["prune"]) == output_hashes(whole, ["prune"])

    prune.main(argv)  # again, with every round saved: nothing to fine-tune, the same files
    assert _resumed_after(killed) == 3
    assert output_hashes(killed, ["prune"]) == output_hashes(whole, ["prune"])


def test_prune_resumes_only_with_its_fingerprint(
    tmp_path: Path, trained_model: Path, prepared: Path, tiny_params: Params
) -> None:
    p, t, c = tiny_params.prune, tiny_params.train, tiny_params.compute
    fp = prune_rounds.fingerprint(p, t, c, trained_model, prepared)
    assert (
        prune_rounds.fingerprint(p.model_copy(update={"seed": 1}), t, c, trained_model, prepared)
        != fp
    )
    other_train = t.model_copy(update={"batch_size": 64})
    assert prune_rounds.fingerprint(p, other_train, c, trained_model, prepared) != fp
    quiet = t.model_copy(update={"progress_bar": not t.progress_bar})
    assert prune_rounds.fingerprint(p, quiet, c, trained_model, prepared) == fp

    net, _ = load_model(trained_model)
    prune_rounds.save_round(tmp_path, fp, 1, net, {"round1": {}})
    assert prune_rounds.load_round(tmp_path, fp)["round"] == 1
    assert prune_rounds.load_round(tmp_path, "other") is None
    (tmp_path / prune_rounds.ROUND_CKPT).write_bytes(b"cut short by a kill")
    assert prune_rounds.load_round(tmp_path, fp) is None


def test_a_prune_checkpoint_that_would_run_code_is_refused_unread(
    tmp_path: Path, trained_model: Path, prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = tiny_params_dict()
    params = parse_params(raw)
    run_dir = tmp_path / "run"
    fp = prune_rounds.fingerprint(
        params.prune, params.train, params.compute, trained_model, prepared
    )
    marker = plant_checkpoint(run_dir / "checkpoints/prune" / prune_rounds.ROUND_CKPT, fp, round=1)
    prune.main(_prune_argv(run_dir, trained_model, prepared, raw))
    assert not marker.exists()
    log = capsys.readouterr().err  # the stage's own logging, set up by its main
    assert "made to run code when unpickled; refused unread: starting at round 1" in log
    assert _resumed_after(run_dir) is None and (run_dir / "models/lenet5_pruned.pt").is_file()


def test_unstructured_masks_survive_a_saved_round(tmp_path: Path, trained_model: Path) -> None:
    dense, _ = load_model(trained_model)
    net = pruning.plain_copy(dense)
    pruning.unstructured_step(net, 0.5)
    prune_rounds.save_round(tmp_path, "fp", 1, net, {})
    back = prune_rounds.restore_net(prune_rounds.load_round(tmp_path, "fp"))
    saved, restored = net.state_dict(), back.state_dict()
    assert saved.keys() == restored.keys() and any(k.endswith("weight_mask") for k in saved)
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    pruning.unstructured_step(back, 0.75)  # the next round prunes on top of the saved masks
    pruning.make_permanent(back)
    assert pruning.sparsity(back) == pytest.approx(0.75, abs=1e-3)
