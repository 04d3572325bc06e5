"""params.yaml's comments and the README's params table are what the schema generates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mnist_pipeline.params import docs as params_docs
from mnist_pipeline.params.schema import load_params
from tests.conftest import ROOT

PARAMS = ROOT / "params.yaml"
README = ROOT / "docs" / "pipeline.md"  # the page that holds the params table
REGENERATE = f"regenerate: {params_docs.COMMAND}"


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path]:
    """Temporary copies of params.yaml and README.md, as the generator writes them."""
    params, readme = tmp_path / "params.yaml", tmp_path / "README.md"
    shutil.copy(PARAMS, params)
    shutil.copy(README, readme)
    params_docs.write(params, readme)
    return params, readme


def test_every_key_has_a_description() -> None:
    missing = [k for k, f in params_docs.fields() if not (f.description or "").strip()]
    assert not missing, (
        f"add Field(description=...) in mnist_pipeline/params/schema.py for {missing}"
    )


def test_descriptions_leave_the_allowed_values_to_the_types() -> None:
    for key, field in params_docs.fields():
        if params_docs._section(field) is None:
            choices = params_docs.allowed(field).removeprefix("one of: ")
            assert choices not in (field.description or ""), f"{key} repeats {choices!r}"


def test_allowed_values_come_from_the_types() -> None:
    allowed = {key: a for key, a, _ in params_docs.table_rows()}
    assert allowed["train.optimizer.name"] == "one of: adam | adamw | sgd"
    assert allowed["train.accelerator"] == "one of: auto | cpu | gpu | cuda | mps"
    assert allowed["train.scheduler.pct_start"] == "0 < float < 1"
    assert allowed["train.scheduler.step_size"] == "int >= 1"
    assert allowed["prepare.val_size"] == "1 <= int <= 30000"
    assert allowed["train.devices"] == "int | auto"
    assert allowed["prepare.mirror"] == "string | null"
    assert allowed["train.compile"] == "true | false"


def test_params_yaml_has_one_comment_line_per_key() -> None:
    lines = PARAMS.read_text().splitlines()
    header = lines.index("")  # the file's own header ends at the first blank line
    keys = [i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    for i in keys:
        assert lines[i - 1].lstrip().startswith("#"), f"no comment above {lines[i]!r}"
        if i - 2 > header:
            assert not lines[i - 2].lstrip().startswith("#"), f"two comments on {lines[i]!r}"
    assert all(len(ln) <= params_docs.WIDTH for ln in lines)


def test_the_comment_is_the_title_or_first_sentence_with_the_allowed_values() -> None:
    comments = dict((key, params_docs.summary(key, field)) for key, field in params_docs.fields())
    # The first sentence, and the values where they say more than the type.
    assert comments["train.optimizer.lr"] == (
        "Learning rate; with the onecycle schedule, its peak. [0 < float <= 10]"
    )
    assert comments["train.optimizer.nesterov"] == (
        "SGD only: Nesterov momentum (needs momentum > 0)."
    )
    # A title where the description's first sentence runs long; the table keeps it whole.
    assert comments["train.seed"].startswith("Seed of the weight initialisation and of the")
    assert "resumed run" in {k: m for k, _, m in params_docs.table_rows()}["train.seed"]


def test_a_description_too_long_for_one_line_needs_a_title() -> None:
    from pydantic.fields import FieldInfo

    field = FieldInfo(annotation=int, description="A very long first sentence " * 5 + ".")
    with pytest.raises(ValueError, match=r"x\.y: .*Field\(title=\.\.\.\)"):
        params_docs.summary("x.y", field)


def test_repo_files_are_what_the_generator_writes() -> None:
    problems = params_docs.drift(PARAMS, README)
    assert not problems, "\n".join([*problems, REGENERATE])


def test_rewrite_keeps_every_value_as_written() -> None:
    text = PARAMS.read_text()
    new = params_docs.render_params_yaml(text)
    assert yaml.safe_load(new) == yaml.safe_load(text)
    assert "    lr: 2.4e-2\n" in new


def test_rewrite_replaces_comments_and_keeps_odd_value_text(tmp_path: Path) -> None:
    text = PARAMS.read_text()
    text = text.replace("  mirror: null", "  mirror: 'http://host/#mnist' # a comment")
    text = text.replace("    lr: 2.4e-2", "    lr: 0.024   # trailing")
    text = text.replace("  seed: 42", "  # stale comment\n  seed:   42")
    new = params_docs.render_params_yaml(text)
    assert yaml.safe_load(new) == yaml.safe_load(text)
    assert "  mirror: 'http://host/#mnist'\n" in new
    assert "    lr: 0.024\n" in new and "trailing" not in new and "stale" not in new
    # dvc exp run -S writes an empty value for null; it is kept as it is.
    assert "  mirror:\n" in params_docs.render_params_yaml(
        text.replace(" 'http://host/#mnist'", "")
    )
    path = tmp_path / "params.yaml"
    path.write_text(new)
    assert load_params(path).prepare.mirror == "http://host/#mnist"


def test_rewrite_is_idempotent(copies: tuple[Path, Path]) -> None:
    params, readme = copies
    before = params.read_text(), readme.read_text()
    assert params_docs.write(params, readme) == []
    assert (params.read_text(), readme.read_text()) == before
    assert params_docs.main(["--check", "--params", str(params), "--readme", str(readme)]) == 0


def test_a_drifted_comment_in_params_yaml_fails_the_check(
    copies: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    params, readme = copies
    text = params.read_text()
    line = "    # SGD only: momentum. [0 <= float < 1]\n"
    assert line in text
    params.write_text(text.replace(line, "    # Momentum.\n", 1))
    assert params_docs.main(["--check", "--params", str(params), "--readme", str(readme)]) == 1
    assert f"{params}: comments drifted from the schema at train.optimizer.momentum" in caplog.text
    assert REGENERATE in caplog.text
    assert str(readme) not in caplog.text


def test_a_trailing_comment_fails_the_check(copies: tuple[Path, Path]) -> None:
    params, readme = copies
    params.write_text(params.read_text().replace("  seed: 42\n", "  seed: 42  # the seed\n"))
    assert params_docs.drift(params, readme) == [
        f"{params}: comments drifted from the schema at train.seed"
    ]


def test_a_drifted_readme_row_fails_the_check(
    copies: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    params, readme = copies
    text = readme.read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| `export.atol` |"))
    readme.write_text(text.replace(row, row.replace("Largest", "Smallest")))
    assert params_docs.main(["--check", "--params", str(params), "--readme", str(readme)]) == 1
    assert f"{readme}: params table drifted from the schema at export.atol" in caplog.text
    assert REGENERATE in caplog.text


def test_a_missing_readme_row_is_named(copies: tuple[Path, Path]) -> None:
    params, readme = copies
    text = readme.read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| `train.seed` |"))
    readme.write_text(text.replace(row + "\n", ""))
    assert params_docs.drift(params, readme) == [
        f"{readme}: params table drifted from the schema at train.seed"
    ]


def test_write_touches_only_the_table_in_the_readme(copies: tuple[Path, Path]) -> None:
    params, readme = copies
    text = readme.read_text()
    start = text.index(params_docs.TABLE_START)
    end = text.index(params_docs.TABLE_END)
    stale = text[:start] + params_docs.TABLE_START + "\nold table\n" + text[end:]
    readme.write_text(stale)
    assert params_docs.write(params, readme) == [readme]
    assert readme.read_text() == text


def test_the_table_can_live_in_any_file(copies: tuple[Path, Path], tmp_path: Path) -> None:
    params, _ = copies
    page = tmp_path / "params.md"
    page.write_text(f"# Params\n\n{params_docs.TABLE_START}\n{params_docs.TABLE_END}\n")
    assert params_docs.main(["--write", "--params", str(params), "--table", str(page)]) == 0
    assert "| `train.seed` |" in page.read_text()
    assert params_docs.main(["--check", "--params", str(params), "--table", str(page)]) == 0


def test_readme_without_markers_is_an_error(copies: tuple[Path, Path]) -> None:
    params, readme = copies
    readme.write_text("# a README without the table\n")
    assert params_docs.main(["--write", "--params", str(params), "--readme", str(readme)]) == 2


def test_unknown_key_is_an_error(copies: tuple[Path, Path]) -> None:
    params, _ = copies
    with pytest.raises(ValueError, match=r"train\.sed: not in the schema"):
        params_docs.render_params_yaml(params.read_text().replace("  seed: 42", "  sed: 42"))
