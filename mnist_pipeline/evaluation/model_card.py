"""A model card (Markdown) for each artifact of `dvc.yaml`, written from results only.

What goes in: the artifact's entry (`desc`, `labels`, `meta`: which network, format and
precision it is), the stages' metrics (`metrics/*.json`), the per-class test figures, the
params and the prepared data's meta. Never timings, measurements or run records: the same
results give the same bytes, so the card is hashed like any output and only moves when a
result does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_pipeline.params.schema import Params

LIMITATIONS = (
    "Trained on MNIST only: single handwritten digits 0-9, light on dark, scaled into a 20x20 "
    "box and centred by mass in a 28x28 field. Images are brought to that form first "
    "(`mnist-predict`, `mnist-serve`), which works for one digit on a plain background.",
    "Not for letters, symbols, several digits in one image, or photos of scenes: it always "
    "answers one of the ten digits, with no 'none of these'. A high probability does not "
    "mean the input was a digit.",
    "MNIST's writers are American census staff and students; other scripts and styles of "
    "writing digits (a crossed 7, a European 1) are under-represented.",
)


@dataclass(frozen=True)
class Results:
    """Every result a card is written from."""

    params: Params
    data_meta: dict[str, Any]  # data/prepared's meta.json: sizes, mean, std
    evaluate: dict[str, Any]
    per_class: list[dict[str, Any]]
    prune: dict[str, Any]
    export: dict[str, Any]
    quantize: dict[str, Any]
    profile: dict[str, Any]  # the drift reference profile (`profile` stage)
    profile_file: tuple[str, str]  # its file name and sha256


def _pct(x: float) -> str:
    return f"{x:.2%}"


def test_accuracy(meta: dict[str, Any], r: Results) -> float:
    """The artifact's own test accuracy, from the stage that made it."""
    variant = meta["variant"]
    if meta.get("int8"):
        return r.quantize[variant]["int8_test_acc"]
    if meta["format"] == "onnx":
        return r.export[variant]["ort_test_acc"]
    return r.evaluate["test"]["acc"]


def size_bytes(meta: dict[str, Any], r: Results) -> int | None:
    variant = meta["variant"]
    if meta.get("int8"):
        return r.quantize[variant]["int8_bytes"]
    if meta["format"] == "onnx":
        return r.export[variant]["onnx_bytes"]
    return None


def weakest(per_class: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The `n` classes of lowest F1 (ties: the lower digit first)."""
    return sorted(per_class, key=lambda c: (c["f1"], int(c["class"])))[:n]


def contract_lines(meta: dict[str, Any], r: Results) -> list[str]:
    """The checks the artifact passed on its way out of the pipeline."""
    p, variant = r.params, meta["variant"]
    lines = []
    if variant == "pruned":
        pr = r.prune
        lines.append(
            f"- Pruning (`prune`, {p.prune.method}, {p.prune.rounds} rounds): parameters "
            f"{pr['dense']['params']:,} -> {pr['pruned']['params']:,} "
            f"({pr['ratio']['params']:.0%} of them), MACs {pr['dense']['macs']:,} -> "
            f"{pr['pruned']['macs']:,}; test accuracy {_pct(pr['dense']['test_acc'])} -> "
            f"{_pct(pr['pruned']['test_acc'])} after fine-tuning."
        )
    if meta["format"] == "onnx":
        ex = r.export[variant]
        lines.append(
            f"- ONNX parity (`export`): ONNX Runtime's logits within `export.atol` "
            f"{ex['parity_atol']:g} of PyTorch's on the whole test set, with "
            f"{ex['mismatches']} different predictions."
        )
    if meta.get("int8"):
        q = r.quantize[variant]
        lines.append(
            f"- INT8 (`quantize`, {r.quantize['method']} calibration on "
            f"{r.quantize['calibration_size']} validation digits): accuracy drop "
            f"{q['acc_drop_points']:+.2f} points against the float model (at most "
            f"{p.quantize.max_acc_drop:g}), agreement {_pct(q['agreement'])} (at least "
            f"{_pct(p.quantize.min_agreement)}), {q['size_ratio']:.2f}x the float file."
        )
    return lines or ["- The `evaluate` stage's test-set figures below; no further contract."]


def _input_line(meta: dict[str, Any]) -> str:
    if meta["format"] == "onnx":
        return (
            "raw grayscale pixels 0-255, float32 `[N, 1, 28, 28]` named `pixels`, giving logits "
            "`[N, 10]` named `logits` (the normalization is inside the graph)"
        )
    return (
        "a PyTorch LeNet-5 state dict with its widths and normalization; load with "
        "`mnist_pipeline.model.load_model`, feed normalized `[N, 1, 28, 28]` tensors"
    )


def _about(name: str, artifact: dict[str, Any], r: Results) -> list[str]:
    """Title, description, intended use, input contract and data."""
    p, sizes = r.params, r.data_meta["sizes"]
    return [
        f"# Model card: {name}",
        "",
        artifact.get("desc", "").strip(),
        "",
        f"Labels: {', '.join(f'`{label}`' for label in artifact.get('labels', []))}. "
        f"File: `{artifact['path']}`.",
        "",
        "## Intended use",
        "",
        "Classifying single handwritten digits (0-9) written MNIST-style, as a reference for "
        "a reproducible training, pruning, export and serving pipeline: demos, tests, teaching "
        "and benchmarks. Not for decisions about people.",
        "",
        "## Input contract",
        "",
        f"Input: {_input_line(artifact['meta'])}. A digit is light on dark, fitted into 20x20 "
        "and centred by mass in 28x28, as MNIST's are; `mnist-predict` and `mnist-serve` do "
        "this for any image.",
        "",
        "## Training data and split",
        "",
        f"MNIST: {sizes['train']:,} training and {sizes['val']:,} validation digits (a split "
        f"of the 60,000 training images, seed {p.prepare.split_seed}), tested on the "
        f"{sizes['test']:,} test digits. Pixels normalized with the training split's mean "
        f"{r.data_meta['mean']:.4f} and std {r.data_meta['std']:.4f}.",
    ]


def _key_params(meta: dict[str, Any], p: Params) -> list[str]:
    t, o = p.train, p.train.optimizer
    rows = [
        "## Key params",
        "",
        "| param | value |",
        "|---|---|",
        f"| `train.max_epochs` | {t.max_epochs} |",
        f"| `train.batch_size` | {t.batch_size} |",
        f"| `train.optimizer` | {o.name}, lr {o.lr:g}, weight decay {o.weight_decay:g} |",
        f"| `train.scheduler.name` | {t.scheduler.name} |",
        f"| `train.seed` | {t.seed} |",
    ]
    if meta["variant"] == "pruned":
        rows.append(f"| `prune.method` | {p.prune.method}, {p.prune.rounds} rounds |")
        rows.append(f"| `prune.structured.ratio` | {p.prune.structured.ratio:g} |")
    if meta["format"] == "onnx":
        rows.append(f"| `export.opset` | {p.export.opset} |")
    if meta.get("int8"):
        rows.append(f"| `quantize.method` | {p.quantize.method} |")
    return rows


def _results(meta: dict[str, Any], r: Results, n_weakest: int) -> list[str]:
    """Test accuracy, the weakest classes, the size and the contract passed."""
    size = size_bytes(meta, r)
    dense = r.prune["dense" if meta["variant"] == "dense" else "pruned"]
    return [
        "## Test results",
        "",
        f"Test accuracy: **{_pct(test_accuracy(meta, r))}** on "
        f"{r.data_meta['sizes']['test']:,} digits.",
        "",
        f"Weakest classes (F1 of the dense PyTorch model, `evaluate`; lowest {n_weakest}):",
        "",
        "| digit | F1 | precision | recall | support |",
        "|---|--:|--:|--:|--:|",
        *(
            f"| {c['class']} | {c['f1']:.4f} | {c['precision']:.4f} | {c['recall']:.4f} | "
            f"{c['support']} |"
            for c in weakest(r.per_class, n_weakest)
        ),
        "",
        "## Size",
        "",
        f"{dense['params']:,} parameters, {dense['macs']:,} multiply-accumulates per digit"
        + (f"; {size:,} bytes on disk." if size is not None else "."),
        "",
        "## Contract it passed",
        "",
        *contract_lines(meta, r),
    ]


def _drift(artifact: dict[str, Any], r: Results) -> list[str]:
    """The reference profile `mnist-serve` measures this model's drift against."""
    file, sha256 = r.profile_file
    entry = r.profile["models"].get(artifact["path"].rsplit("/", 1)[-1])
    lines = [
        "## Drift monitoring",
        "",
        f"Reference profile: `{file}` (sha256 `{sha256}`): the features of the training "
        "digits and the label prior, which `mnist-serve` compares live traffic with "
        "(`GET /monitoring/drift`).",
    ]
    if entry is None:
        return [*lines, "It holds no predictions of this model: only ONNX models are served."]
    return [
        *lines,
        f"This model's entry, `{artifact['path'].rsplit('/', 1)[-1]}`: on held-out digits, "
        f"accuracy {_pct(entry['accuracy'])}, mean max-softmax "
        f"{entry['confidence_mean']:.4f}; its predicted classes and confidence are profiled.",
    ]


def _limits_and_reproduce(name: str, artifact: dict[str, Any]) -> list[str]:
    return [
        "## Limitations",
        "",
        *(f"- {line}" for line in LIMITATIONS),
        "",
        "## How to reproduce",
        "",
        "```bash",
        "git clone <this repository> && cd mnist-pipeline && uv sync --locked",
        f"uv run dvc repro card   # the stages it needs, then the cards; {artifact['path']}",
        "```",
        "",
        "At the commit of a registered version (`gto show " + name + "`), `params.yaml` and "
        "`dvc.lock` pin every input; the figures above are that run's `metrics/`.",
        "",
    ]


def render(name: str, artifact: dict[str, Any], r: Results, n_weakest: int) -> str:
    """The card of one `dvc.yaml` artifact, as Markdown."""
    meta = artifact["meta"]
    sections = [
        _about(name, artifact, r),
        _key_params(meta, r.params),
        _results(meta, r, n_weakest),
        _drift(artifact, r),
        _limits_and_reproduce(name, artifact),
    ]
    return "\n\n".join("\n".join(s) for s in sections)
