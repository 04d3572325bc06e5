"""User values that become paths, refs or git arguments: refused before they reach one.

The rules are plain functions; then the sweep refuses an `--origin` git would read as an
option (`--upload-pack=...` runs a command) and a `--name` that climbs out of its folder, on
the command line and as flow-run parameters alike, before anything is written or run; and
the git commands get their URL after `--` even when the check is bypassed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.errors import PARAMS_ERROR_EXIT, UsageError
from pipelines import user_values, verify
from pipelines.sweep import trials
from testing.scratch_repo import git
from tests.pipelines.conftest import make_repo


@pytest.mark.parametrize("value", ["lr", "sweep-1a2b3c", "lr_2.wide", "LR-000"])
def test_a_slug_is_accepted(value: str) -> None:
    assert user_values.slug("--name", value) == value


@pytest.mark.parametrize(
    "value", ["../../escaped", "..", ".hidden", "-x", "a/b", "", "a" * 65, "x.", "a..b", "é"]
)
def test_anything_else_is_refused_as_a_name_naming_the_option(value: str) -> None:
    with pytest.raises(UsageError, match=rf"^--name {value!r}: use letters, digits"):
        user_values.slug("--name", value)


def test_a_metric_is_a_path_below_its_folder() -> None:
    assert user_values.relative_path("--prune-metric", "val/acc") == "val/acc"
    for bad in ("../../etc/passwd", "/etc/passwd", "val//acc", "val/"):
        with pytest.raises(UsageError, match=r"^--prune-metric"):
            user_values.relative_path("--prune-metric", bad)


def test_a_git_url_or_revision_is_never_an_option() -> None:
    for good in ("origin", "https://git.example/mnist.git", "/srv/git/mnist", "HEAD~1"):
        assert user_values.not_an_option("--origin", good) == good
    for bad in ("--upload-pack=touch X", "-oProxyCommand=touch X", "-utouch X", "", "a\nb"):
        with pytest.raises(UsageError, match=r"^--origin .*read as an option of git"):
            user_values.not_an_option("--origin", bad)


# --- the flows refuse them before anything ----------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None, flow_env: None) -> Path:
    base = tmp_path_factory.mktemp("values")
    repo = make_repo(base / "repo", base / "remote")
    # A git remote: `git ls-remote --upload-pack=...` without a URL runs it against this one.
    git(base, "clone", "--quiet", "--bare", str(repo), str(base / "server.git"))
    git(repo, "remote", "add", "origin", str(base / "server.git"))
    return repo


def _injections(marker: Path) -> list[str]:
    """`--origin` values that would make git run `touch marker`, or read an option."""
    return [f"--upload-pack=touch {marker}", f"-utouch {marker}", f"-oProxyCommand=touch {marker}"]


def test_an_origin_git_would_read_as_an_option_is_refused_and_runs_nothing(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.sweep.cli import main

    marker = tmp_path / "X"
    for origin in _injections(marker):
        args = ["--root", str(repo), "--name", "inject", f"--origin={origin}"]
        args += ["-S", "train.seed=1"]
        assert main(args) == PARAMS_ERROR_EXIT
        assert f"error: --origin {origin!r}: not a git URL" in capsys.readouterr().err
        assert not marker.exists()
    assert not trials.sweep_dir(repo, "inject").exists()


def test_a_name_that_climbs_out_of_the_sweeps_folder_is_refused_before_any_file(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.sweep.cli import main

    # An invalid value too: without the check, the sweep got as far as writing the commit's
    # params.yaml beside its clones, two folders up, before it refused it.
    args = ["--root", str(repo), "--name", "../../escaped", "-S", "train.optimizer.lr=20.0"]
    assert main(args) == PARAMS_ERROR_EXIT
    assert "error: --name '../../escaped': use letters, digits" in capsys.readouterr().err
    assert not (repo / ".dvc" / "escaped").exists()
    assert not (repo / "sweeps" / "escaped.json").exists()


def _sweep(repo: Path, **params: Any) -> Any:
    from pipelines.flow_cli import grouped
    from pipelines.sweep.flow import sweep

    params = grouped(sweep, overrides=["train.seed=1"], **params)
    return sweep(root=str(repo), return_state=True, **params)


@pytest.mark.parametrize(
    ("param", "value", "option"),
    [
        ("name", "../../escaped", "--name"),
        ("origin", "--upload-pack=touch {marker}", "--origin"),
        ("origin", "-oProxyCommand=touch {marker}", "--origin"),
        ("metric", "../../../../etc/passwd", "--prune-metric"),
        ("model_name", "--force", "--model-name"),
    ],
)
def test_the_same_values_as_flow_run_parameters_fail_the_run_before_anything(
    repo: Path, tmp_path: Path, param: str, value: str, option: str
) -> None:
    marker = tmp_path / "X"
    value = value.format(marker=marker)
    state = _sweep(repo, **{param: value})
    assert state.is_failed() and f"{option} {value!r}" in state.message, state.message
    assert not marker.exists()
    assert not (repo / ".dvc" / "escaped").exists()


def test_the_pipeline_and_audit_flows_check_theirs(repo: Path) -> None:
    from pipelines.flow import audit, pipeline

    state = pipeline(root=str(repo), model_name="../x", push=False, return_state=True)
    assert state.is_failed() and "--model-name '../x'" in state.message, state.message
    state = audit(root=str(repo), rev="--output=x", return_state=True)
    assert state.is_failed() and "--rev '--output=x'" in state.message, state.message
    with pytest.raises(UsageError, match=r"^--rev '-h'"):
        verify.verify(repo, "-h")


def test_git_gets_the_url_after_a_double_dash_even_unchecked(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "X"
    monkeypatch.setattr(user_values, "not_an_option", lambda option, value: value)
    commit = trials.head_commit(repo)
    with pytest.raises(UsageError, match="git cannot read it"):
        trials.check_origin(repo, f"--upload-pack=touch {marker}", commit)
    source = trials.Source(url=f"--upload-pack=touch {marker}")
    monkeypatch.setenv(trials.WORKDIR_ENV, str(tmp_path / "work"))
    with pytest.raises(Exception, match="clone"):
        trials.workspace(source, "s", "s-000", commit)
    assert not marker.exists()
    with pytest.raises(UsageError, match=r"^trial name '\.\./s-000'"):
        trials.workspace(source, "s", "../s-000", commit)
