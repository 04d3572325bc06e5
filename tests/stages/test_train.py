"""Training: it learns, a killed run resumes at the next epoch with the same result, DDP works."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from mnist_pipeline.data.dataset import load_split
from mnist_pipeline.errors import ParamsError
from mnist_pipeline.model import load_model, predict_logits
from mnist_pipeline.params.schema import parse_params
from mnist_pipeline.training import checkpoints
from testing.ports import PortTaken, on_a_free_port, port_taken
from tests.conftest import ROOT, tiny_params_dict
from tests.stage_runs import output_hashes, stage_argv

COMPUTE = parse_params(tiny_params_dict()).compute


def _train_args(tmp: Path, out: str, ckpt_dir: Path | None = None) -> list[str]:
    """dvc.yaml's arguments for the stage, with the outputs under `tmp / out`."""
    ckpt = {"ckpt_dir": ckpt_dir} if ckpt_dir else {}
    return stage_argv("train", tmp / "params.yaml", tmp / out, data=tmp / "data", **ckpt)


def _run_train(
    tmp: Path, params: dict, out: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m stages.train` as DVC runs it, in a fresh process."""
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [sys.executable, "-m", "stages.train", *_train_args(tmp, out)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_training_learns(trained_model: Path, prepared: Path) -> None:
    net, meta = load_model(trained_model)
    test = load_split(prepared, "test")
    acc = (predict_logits(net, test.images).argmax(1) == test.labels).float().mean()
    assert acc >= 0.9
    # What determines the weights' meaning only: where and when they were made is provenance.
    assert set(meta) == {"mean", "std", "precision"}


# Slow: tests/pipelines/test_flow.py kills and retries `train` in the default run and checks
# the same weights, metrics and curves; this one checks it at the stage's own level.
@pytest.mark.slow
def test_killed_training_resumes_at_next_epoch_with_the_same_result(
    tmp_path: Path, prepared: Path
) -> None:
    (tmp_path / "data").symlink_to(prepared)
    params = tiny_params_dict()
    params["train"]["max_epochs"] = 3

    killed = _run_train(tmp_path, params, "run", {checkpoints.FAIL_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "run" / "models/lenet5.pt").exists()
    ckpt = torch.load(tmp_path / "run/checkpoints/train/last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0  # one epoch done, killed halfway through the second

    # The retry keeps the env var (as a Prefect retry would): a resumed run is not killed again.
    resumed = _run_train(tmp_path, params, "run", {checkpoints.FAIL_ENV: "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    # The stage's own lines and Lightning's useful ones, without its advertisements and the
    # deprecation noise from inside Lightning.
    assert "`Trainer.fit` stopped" in resumed.stderr
    assert "💡" not in resumed.stderr and "LeafSpec" not in resumed.stderr
    summary = json.loads((tmp_path / "run" / "metrics/train.json").read_text())
    record = json.loads((tmp_path / "run" / "provenance/train.json").read_text())
    assert record["resumed_from_epoch"] == 1 and summary["epochs"] == 3
    assert json.loads((tmp_path / "run" / "measurements/train.json").read_text())["fit_time_s"] > 0

    # Curves continue: one row per epoch, steps increasing, nothing restarted or repeated.
    rows = (tmp_path / "run/dvclive/train/plots/metrics/val/acc.tsv").read_text().splitlines()[1:]
    steps = [int(r.split("\t")[0]) for r in rows]
    assert len(steps) == 3 and steps == sorted(set(steps))

    fresh = _run_train(tmp_path, params, "fresh")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    a, _ = load_model(tmp_path / "run" / "models/lenet5.pt")
    b, _ = load_model(tmp_path / "fresh" / "models/lenet5.pt")
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0, msg=f"{name} differs")
    # Not only the same weights: the same bytes, in another folder, after a kill and a resume.
    assert output_hashes(tmp_path / "run", ["train"]) == output_hashes(
        tmp_path / "fresh", ["train"]
    )

    # Run again on the finished checkpoint (`dvc repro -f train`): nothing is trained, and
    # every output comes out byte for byte as before, so nothing downstream needs to re-run.
    before = output_hashes(tmp_path / "fresh", ["train"])
    (tmp_path / "fresh" / "models/lenet5.pt").unlink()
    (tmp_path / "fresh" / "metrics/train.json").unlink()
    again = _run_train(tmp_path, params, "fresh")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr
    assert output_hashes(tmp_path / "fresh", ["train"]) == before


@pytest.mark.slow  # two gloo processes: 15 s of the default run's 5 minutes
def test_ddp_on_two_cpu_processes(tmp_path: Path, prepared: Path) -> None:
    (tmp_path / "data").symlink_to(prepared)
    params = tiny_params_dict()
    params["train"].update(max_epochs=3, strategy="ddp", devices=2, accelerator="cpu")
    done = _run_train(tmp_path, params, "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "metrics/train.json").read_text())
    assert summary["world_size"] == 2
    net, _ = load_model(tmp_path / "ddp" / "models/lenet5.pt")
    test = load_split(prepared, "test")
    assert (predict_logits(net, test.images).argmax(1) == test.labels).float().mean() >= 0.9


def _two_nodes(
    tmp: Path,
    out: str,
    launcher: str,
    env: dict | None = None,
    ckpt_dirs: tuple[Path | None, Path | None] = (None, None),
) -> list[subprocess.CompletedProcess]:
    """The train stage on two "machines" (node ranks 0 and 1, one process each, on 127.0.0.1),
    each started as the README's recipe starts it: by torchrun, or as srun starts a SLURM
    job's tasks (the environment variables Lightning's SLURMEnvironment reads)."""
    return on_a_free_port(partial(_two_nodes_on, tmp, out, launcher, env, ckpt_dirs))[0]


def _two_nodes_on(
    tmp: Path,
    out: str,
    launcher: str,
    env: dict | None,
    ckpt_dirs: tuple[Path | None, Path | None],
    port: int,
) -> list[subprocess.CompletedProcess]:
    """`_two_nodes` with rank 0 listening on `port`; `PortTaken` if another process had it."""
    procs = []
    for node in (0, 1):
        args = _train_args(tmp, out, ckpt_dirs[node])
        if launcher == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2"]
            cmd += ["--nproc-per-node=1", f"--node-rank={node}", "--master-addr=127.0.0.1"]
            cmd += [f"--master-port={port}", "-m", "stages.train", *args]
            launch_env = {}
        else:
            cmd = [sys.executable, "-m", "stages.train", *args]
            launch_env = {
                "SLURM_JOB_ID": "4242",
                "SLURM_JOB_NAME": "mnist-train",
                "SLURM_NNODES": "2",
                "SLURM_NODELIST": "127.0.0.1",
                "SLURM_NTASKS": "2",
                "SLURM_NTASKS_PER_NODE": "1",
                "SLURM_NODEID": str(node),
                "SLURM_PROCID": str(node),
                "SLURM_LOCALID": "0",
                "MASTER_PORT": str(port),
            }
        run_env = {**os.environ, **launch_env, **(env or {})}
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    done = []
    for proc, cmd in zip(procs, [p.args for p in procs], strict=True):
        stdout, _ = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout.decode(), ""))
    if any(port_taken(d.stdout) for d in done):
        raise PortTaken(f"port {port} was taken before rank 0 bound it")
    return done


@pytest.mark.slow  # three two-process runs and a refused one: about 60 s
def test_two_nodes_train_as_one_run_and_resume_a_kill_with_the_same_weights(
    tmp_path: Path, prepared: Path
) -> None:
    (tmp_path / "data").symlink_to(prepared)
    params = tiny_params_dict()
    params["train"].update(max_epochs=3, strategy="ddp", devices=1, num_nodes=2, accelerator="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    # Uninterrupted, as a SLURM job's two tasks.
    slurm = _two_nodes(tmp_path, "slurm", "slurm")
    assert [d.returncode for d in slurm] == [0, 0], slurm[0].stdout[-3000:]
    assert "MEMBER: 2/2" in slurm[1].stdout
    assert json.loads((tmp_path / "slurm" / "metrics/train.json").read_text())["world_size"] == 2

    # By torchrun, killed in its second epoch on both machines, then launched again.
    killed = _two_nodes(tmp_path, "torchrun", "torchrun", {checkpoints.FAIL_ENV: "1"})
    assert all(d.returncode != 0 for d in killed)
    assert not (tmp_path / "torchrun" / "models/lenet5.pt").exists()
    again = _two_nodes(tmp_path, "torchrun", "torchrun", {checkpoints.FAIL_ENV: "1"})
    assert [d.returncode for d in again] == [0, 0], again[0].stdout[-3000:]
    assert all("resuming from" in d.stdout for d in again)
    record = json.loads((tmp_path / "torchrun" / "provenance/train.json").read_text())
    assert record["resumed_from_epoch"] == 1
    # The same run either way: the launcher, the kill and the resume change no bit.
    slurm_model = (tmp_path / "slurm" / "models/lenet5.pt").read_bytes()
    assert (tmp_path / "torchrun" / "models/lenet5.pt").read_bytes() == slurm_model

    # A machine that cannot see the checkpoint the other resumes from: both stop, saying why,
    # instead of training out of step.
    shutil.copytree(tmp_path / "torchrun/checkpoints", tmp_path / "apart/checkpoints")
    apart = _two_nodes(tmp_path, "apart", "torchrun", ckpt_dirs=(None, tmp_path / "elsewhere"))
    assert all(d.returncode != 0 for d in apart)
    assert "would not train the same run" in apart[0].stdout
    assert "rank 1: fingerprint" in apart[0].stdout and "from scratch" in apart[0].stdout


def test_several_nodes_need_ddp() -> None:
    raw = tiny_params_dict()
    raw["train"].update(num_nodes=2, strategy="auto")
    with pytest.raises(ParamsError, match="num_nodes: 2 needs strategy: ddp"):
        parse_params(raw)


def test_tuning_the_batch_size_under_ddp_is_a_params_error() -> None:
    raw = tiny_params_dict()
    raw["train"].update(tune_batch_size=True, strategy="ddp", devices=2)
    with pytest.raises(ParamsError, match="tune_batch_size: true needs strategy: auto"):
        parse_params(raw)
