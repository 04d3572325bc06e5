"""The evaluation's pictures: the confusion matrix and the misclassified digits, as byte-stable
PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or servers
import matplotlib.pyplot as plt
import torch

from mnist_pipeline.atomic import write_figure
from mnist_pipeline.data.dataset import Split
from mnist_pipeline.evaluation.metrics import Evaluation


def plot_confusion(confusion: torch.Tensor, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    # Log colour scale: the diagonal (~1000) would otherwise wash out the errors (~1-10).
    im = ax.imshow(confusion.clamp(min=1).log10().numpy(), cmap="Blues")
    for (i, j), v in zip(
        torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist(),
        confusion.flatten().tolist(),
        strict=True,
    ):
        if v:
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if i == j else "black",
            )
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="predicted",
        ylabel="actual",
        title=f"Test confusion matrix ({int(confusion.sum())} digits)",
    )
    fig.colorbar(im, ax=ax, label="log10(count)")
    write_figure(path, fig, dpi=110)


def plot_misclassified(test: Split, ev: Evaluation, n: int, path: Path) -> None:
    wrong = (ev.preds != test.labels).nonzero().flatten()[:n].tolist()
    cols = 10
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(test.images[i, 0].numpy(), cmap="gray")
        ax.set_title(f"{int(test.labels[i])}→{int(ev.preds[i])}", fontsize=8, color="crimson")
    fig.suptitle(
        f"Misclassified test digits (true→predicted), {len(wrong)} of "
        f"{int((ev.preds != test.labels).sum())}",
        fontsize=10,
    )
    write_figure(path, fig, dpi=100)
