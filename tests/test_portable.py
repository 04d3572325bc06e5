"""The portable compute profile: stage processes compute as params say, whatever the CPU.

Each stage runs as `python -m stages.<name>` (its command in dvc.yaml) in its own process, the
way DVC runs it, so what is pinned before torch loads is what is tested.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnist_pipeline.errors import ParamsError
from mnist_pipeline.params.schema import parse_params
from tests.conftest import tiny_params_dict
from tests.stage_runs import output_hashes, run_stages, stage_env

PIPELINE = ["prepare", "train", "evaluate", "prune", "export", "quantize"]


def _workdir(path: Path, **compute: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)  # a fixture's mktemp folder exists
    raw = tiny_params_dict()
    raw["compute"].update(compute)
    (path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _train(root: Path, mirror: Path, launcher: list[str], **compute: object) -> Path:
    work = _workdir(root, **compute)
    run_stages(work, ["prepare", "train"], mirror, launcher)
    return work


TASKSET = shutil.which("taskset")


def _on_cores(cores: str) -> list[str]:
    """A launcher that keeps the process on `cores` (none without taskset)."""
    return [TASKSET, "-c", cores] if TASKSET else []


# Three trainings shared by the tests below (each is a prepare and a train process).
@pytest.fixture(scope="module")
def one_thread(tmp_path_factory: pytest.TempPathFactory, synthetic_mirror: Path) -> Path:
    """One thread, not the repo's two: the record follows the params, not a default."""
    return _train(tmp_path_factory.mktemp("one-thread"), synthetic_mirror, [], threads=1)


@pytest.fixture(scope="module")
def two_cores(tmp_path_factory: pytest.TempPathFactory, synthetic_mirror: Path) -> Path:
    """The repo's two threads on two cores."""
    return _train(tmp_path_factory.mktemp("two-cores"), synthetic_mirror, _on_cores("0,1"))


def test_a_stage_reports_from_inside_that_it_computed_as_params_say(one_thread: Path) -> None:
    record = json.loads((one_thread / "provenance" / "train.json").read_text())
    assert record["compute"] == {
        "profile": "portable",
        "torch_capability": "AVX2",
        "onednn_isa": record["compute"]["onednn_isa"],
        "mkl_cbwr": "COMPATIBLE,STRICT",
        "threads": 1,
    }
    assert "AVX2" in record["compute"]["onednn_isa"]
    assert "AVX-512" not in record["compute"]["onednn_isa"]
    assert record["precision"] == "32-true"


@pytest.mark.skipif(TASKSET is None, reason="needs taskset (util-linux)")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_training_on_one_core_gives_the_bytes_of_training_on_two(
    tmp_path: Path, synthetic_mirror: Path, two_cores: Path
) -> None:
    one_core = _train(tmp_path / "one", synthetic_mirror, _on_cores("0"))
    two = output_hashes(two_cores, ["train"])
    assert output_hashes(one_core, ["train"]) == two
    assert "models/lenet5.pt" in two


@pytest.mark.skipif(TASKSET is None, reason="needs taskset (util-linux)")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_the_openmp_wait_policy_leaves_the_bytes_alone(
    tmp_path: Path, synthetic_mirror: Path
) -> None:
    """Why the wait policy is a fixed choice (mnist_pipeline.compute.WAIT_POLICY), not a param:
    threads that spin at a barrier and threads that sleep there train the same weights."""
    hashes = {}
    for policy in ("ACTIVE", "PASSIVE"):
        launcher = ["env", f"OMP_WAIT_POLICY={policy}", *_on_cores("0,1")]
        hashes[policy] = output_hashes(
            _train(tmp_path / policy, synthetic_mirror, launcher), ["train"]
        )
    assert "models/lenet5.pt" in hashes["ACTIVE"]
    assert hashes["ACTIVE"] == hashes["PASSIVE"]


def test_a_different_thread_count_gives_different_weights(
    one_thread: Path, two_cores: Path
) -> None:
    """Why `compute.threads` is a param: the comparison above could not pass by accident."""
    one, two = output_hashes(one_thread, ["train"]), output_hashes(two_cores, ["train"])
    assert one["models/lenet5.pt"] != two["models/lenet5.pt"]


def test_16_bit_precision_needs_the_fast_profile() -> None:
    raw = tiny_params_dict()
    raw["train"]["precision"] = "bf16-mixed"
    with pytest.raises(ParamsError, match=r"train.precision: bf16-mixed needs compute.profile"):
        parse_params(raw)
    raw["compute"]["profile"] = "fast"
    assert parse_params(raw).train.precision == "bf16-mixed"


# A launcher that crashes the way qemu-user does, once (it leaves `crashed` behind), then runs
# the stage.
CRASH_ONCE = [
    "bash",
    "-c",
    'if [ ! -e crashed ]; then touch crashed; echo "qemu: uncaught target signal 11 '
    '(Segmentation fault) - core dumped" >&2; exit 139; fi; exec "$@"',
    "crash-once",
]


def test_a_stage_the_emulator_crashed_runs_again_and_a_second_crash_fails(
    tmp_path: Path, synthetic_mirror: Path
) -> None:
    again = _workdir(tmp_path / "again")
    with pytest.warns(UserWarning, match="prepare: emulator crash"):
        run_stages(again, ["prepare"], synthetic_mirror, CRASH_ONCE, emulator_crash_retries=1)
    assert output_hashes(again, ["prepare"])
    once = _workdir(tmp_path / "once")
    with pytest.raises(AssertionError, match="prepare failed"):
        run_stages(once, ["prepare"], synthetic_mirror, CRASH_ONCE)  # no retry asked


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.slow
def test_an_emulated_intel_haswell_computes_every_output_with_the_same_bytes(
    tmp_path: Path, synthetic_mirror: Path
) -> None:
    """The whole pipeline on synthetic data, natively and under `qemu-x86_64 -cpu Haswell`: an
    Intel CPU (GenuineIntel) with AVX2 and FMA but no AVX-512, AVX512-BF16 or AMX, whatever
    CPU runs the test. Every output DVC hashes must have the same bytes."""
    if QEMU is None:
        if os.environ.get("CI") == "true":
            pytest.fail("qemu-x86_64 not found: .ci/run installs Debian's qemu-user")
        pytest.skip("needs qemu-x86_64 (Debian: apt-get install qemu-user)")
    native = _workdir(tmp_path / "native")
    emulated = _workdir(tmp_path / "haswell")
    run_stages(native, PIPELINE, synthetic_mirror)
    haswell = [QEMU, "-cpu", "Haswell"]
    run_stages(emulated, PIPELINE, synthetic_mirror, haswell, 3600, emulator_crash_retries=1)
    assert output_hashes(emulated, PIPELINE) == output_hashes(native, PIPELINE)
    # The emulated CPU really has no AVX-512: unpinned, PyTorch finds AVX2 at best there
    # (/proc/cpuinfo is the host's under qemu-user, so the run records cannot tell).
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in stage_env(synthetic_mirror).items() if k != "ATEN_CPU_CAPABILITY"}
    done = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, "-c", probe],
        env=env, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    assert done.stdout.split() == ["AVX2"]


def test_a_process_computing_otherwise_than_its_params_is_refused() -> None:
    """This process was pinned to the repo's avx2 profile (tests/conftest.py) before torch
    loaded: params asking for AVX-512 kernels, or for another thread count, do not describe
    what it computes with, so a stage would fail rather than record them."""
    from mnist_pipeline import compute
    from mnist_pipeline.errors import StageError

    portable = parse_params(tiny_params_dict()).compute
    assert compute.apply(portable)["torch_capability"] == "AVX2"
    with pytest.raises(StageError, match="the portable profile is not in force"):
        compute.apply(portable.model_copy(update={"isa": "avx512"}))
    facts = compute.apply(portable.model_copy(update={"profile": "fast"}))
    assert facts["profile"] == "fast"  # the fast profile checks nothing
    compute.apply(portable)  # the thread count back for the other tests of this worker
