"""The flows' command lines are derived from their parameters: the same names, defaults and
descriptions as Prefect shows, and a value a parameter's model refuses is a usage error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prefect.exceptions import ParameterTypeError

from pipelines import flow_cli
from pipelines.flow import parser as pipeline_parser
from pipelines.flow import pipeline
from pipelines.sweep.cli import parser as sweep_parser
from pipelines.sweep.flow import sweep
from pipelines.sweep.options import EarlyStopping, Execution, SearchSpace
from tests.conftest import ROOT


def test_sweep_options_land_in_their_groups() -> None:
    argv = ["-S", "train.seed=1,2", "--minimize", "-j", "2", "--target", "train"]
    argv += ["--prune-trials", "median", "--trials", "4", "--register", "--promote"]
    args, kwargs = flow_cli.parse(sweep_parser(), sweep, argv)
    assert kwargs["root"] == "." and args.engine == "threads"
    assert kwargs["space"] == SearchSpace(overrides=["train.seed=1,2"], maximize=False, trials=4)
    assert kwargs["execution"] == Execution(jobs=2, targets=["train"])
    assert kwargs["early_stopping"] == EarlyStopping(pruner="median")
    assert kwargs["promotion"].promote and kwargs["promotion"].register_model
    # What the command line gives by default is what the flow does by default.
    _, defaults = flow_cli.parse(sweep_parser(), sweep, [])
    assert sweep.validate_parameters(defaults) == sweep.validate_parameters({})


def test_pipeline_options_keep_their_names() -> None:
    _, kwargs = flow_cli.parse(pipeline_parser(), pipeline, ["train", "-S", "a=1", "--no-push"])
    assert kwargs["targets"] == ["train"] and kwargs["overrides"] == ["a=1"]
    assert kwargs["push"] is False and kwargs["register_model"] is False
    _, kwargs = flow_cli.parse(pipeline_parser(), pipeline, ["--register", "--bump", "major"])
    assert kwargs["targets"] is None and kwargs["register_model"] and kwargs["bump"] == "major"
    argv = ["--register", "--container-image", "--image-base", "localhost/b:1"]
    _, kwargs = flow_cli.parse(pipeline_parser(), pipeline, argv)
    assert kwargs["container_image"] and kwargs["image_base"] == "localhost/b:1"


def test_every_parameter_is_described_once_for_both_prefect_and_help() -> None:
    for flow, parser in ((sweep, sweep_parser()), (pipeline, pipeline_parser())):
        text = parser.format_help()
        for p in flow_cli.params(flow):
            assert p.description, f"{flow.name}: {p.name} has no description"
            assert (p.cli.help or p.description).split()[0] in text
    schema = sweep.parameters.model_dump_for_openapi()
    fields = schema["definitions"]["Execution"]["properties"]
    assert fields["jobs"]["description"] == "trials running at once"


@pytest.mark.parametrize("argv", [["--jobs", "0"], ["--trials", "0"], ["--bump", "huge"]])
def test_a_value_the_model_refuses_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        flow_cli.parse(sweep_parser(), sweep, argv)
    assert exit_.value.code == 2 and argv[0] in capsys.readouterr().err


def test_a_flat_value_for_no_parameter_is_refused() -> None:
    with pytest.raises(TypeError, match="no parameter 'jbos'"):
        flow_cli.grouped(sweep, jbos=2)


PIPELINE_GATES = [
    ["--min-test-acc", "nan"],
    ["--min-test-acc", "1.5"],
    ["--retries", "-1"],
    ["--retry-delay-s", "inf"],
    ["--stage-timeout-s", "0"],
    ["--stage-timeout-s", "nan"],
]
SWEEP_GATES = [
    ["--min-test-acc", "nan"],
    ["--retries", "-1"],
    ["--trial-timeout-s", "0"],
    ["--prune-percentile", "101"],
]


@pytest.mark.parametrize(
    ("which", "argv"),
    [("pipeline", a) for a in PIPELINE_GATES] + [("sweep", a) for a in SWEEP_GATES],
)
def test_a_gate_cannot_be_talked_past(
    which: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`acc < nan` is always false: a threshold must be a finite number in its range."""
    on_pipeline = which == "pipeline"
    parser, flow = (pipeline_parser(), pipeline) if on_pipeline else (sweep_parser(), sweep)
    with pytest.raises(SystemExit) as exit_:
        flow_cli.parse(parser, flow, argv)
    assert exit_.value.code == 2 and argv[0] in capsys.readouterr().err
    if on_pipeline:  # a run started through Prefect (a deployment, the UI) is refused too
        name = argv[0].lstrip("-").replace("-", "_")
        with pytest.raises(ParameterTypeError, match=name):
            pipeline.validate_parameters({name: float(argv[1])})


@pytest.mark.parametrize("module", ["pipelines.flow", "pipelines.verify"])
def test_a_root_that_does_not_exist_is_a_usage_error(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--root", "/nonexistent/mnist"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "--root '/nonexistent/mnist': no such folder" in done.stderr
    assert "Traceback" not in done.stderr
