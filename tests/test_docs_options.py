"""The main commands' options against the docs, both ways: every option `--help` lists is on
the command's page, and every option the docs pass to the command exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

# command -> (the module whose `main` it runs, its page, how the docs invoke it)
COMMANDS = {
    "mnist-serve": ("mnist_pipeline.serving.server", "serving.md", r"\bmnist-serve"),
    "mnist-predict": ("mnist_pipeline.serving.predict", "serving.md", r"\bmnist-predict"),
    "pipelines.flow": ("pipelines.flow", "orchestration.md", r"-m pipelines\.flow(?![\w.])"),
    "pipelines.sweep": ("pipelines.sweep.cli", "sweeps.md", r"-m pipelines\.sweep(?![\w.])"),
    "pipelines.verify": ("pipelines.verify", "reproducibility.md", r"-m pipelines\.verify\b"),
    "benchmarks": ("benchmarks.__main__", "speed.md", r"-m benchmarks(?![\w.])"),
}
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")


def help_options(module: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(module).main(["--help"])
    assert exited.value.code == 0
    return set(OPTION.findall(capsys.readouterr().out)) - {"--help"}


def invocations(text: str, command: str) -> list[str]:
    """Each command line of `text` (fenced blocks, continuation lines joined, and inline code)
    that runs `command`, from the command on, without its comment."""
    lines = [
        line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()
    ]
    lines += SPAN.findall(FENCE.sub("", text))
    found = []
    for line in lines:
        m = re.search(command, line)
        if m:
            found.append(re.split(r"\s#|\s\|\s|&&|;", line[m.end() :])[0])
    return found


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_the_command_is_on_its_page(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, page, _ = COMMANDS[name]
    text = (ROOT / "docs" / page).read_text()
    named = set(OPTION.findall(text))
    assert sorted(help_options(module, capsys) - named) == [], f"not on docs/{page}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_the_docs_pass_the_command_exists(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, _, command = COMMANDS[name]
    known = help_options(module, capsys)
    unknown, seen = [], 0
    for page in pages():
        for line in invocations(page.read_text(), command):
            seen += 1
            unknown += [f"{page.name}: {o}" for o in OPTION.findall(line) if o not in known]
    assert seen, f"no page runs {name}"
    assert unknown == []


def test_invocations_join_continued_lines_and_drop_comments() -> None:
    text = (
        "Run `uv run mnist-serve --port 1` or:\n\n```bash\n"
        "uv run python -m pipelines.verify --rev HEAD \\\n  --stages train  # not --this\n"
        "uv run python -m pipelines.verify_other --no\n```\n"
    )
    assert [line.split() for line in invocations(text, COMMANDS["pipelines.verify"][2])] == [
        ["--rev", "HEAD", "--stages", "train"]
    ]
    assert invocations(text, COMMANDS["mnist-serve"][2]) == [" --port 1"]
