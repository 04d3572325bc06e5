"""LeNet-5, a plain `nn.Module`, and its file format; no Lightning, so prune and export need none.

The classic form: conv1 is padded by 2 so 28x28 digits flatten to 16*5*5 = 400 features
(61,706 parameters at the default widths). ReLU and max pooling replace the original tanh and
subsampling. Widths are arguments so a structurally pruned model is a LeNet5 too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from mnist_pipeline import plugins
from mnist_pipeline.atomic import write_torch
from mnist_pipeline.errors import StageError

if TYPE_CHECKING:
    from mnist_pipeline.data.dataset import Normalization


@dataclass(frozen=True)
class Widths:
    conv1: int = 6
    conv2: int = 16
    fc1: int = 120
    fc2: int = 84


class LeNet5(nn.Module):
    def __init__(self, widths: Widths | None = None, num_classes: int = 10) -> None:
        super().__init__()
        w = widths or Widths()
        self.widths = w
        # Pool, then ReLU: the same numbers as ReLU then pool (max and ReLU commute), with the
        # ReLU and its backward on a quarter of the elements.
        self.features = nn.Sequential(
            nn.Conv2d(1, w.conv1, kernel_size=5, padding=2),  # (N, c1, 28, 28)
            nn.MaxPool2d(2),  # (N, c1, 14, 14)
            nn.ReLU(inplace=True),
            nn.Conv2d(w.conv1, w.conv2, kernel_size=5),  # (N, c2, 10, 10)
            nn.MaxPool2d(2),  # (N, c2, 5, 5)
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N, c2 * 25)
            nn.Linear(w.conv2 * 25, w.fc1),
            nn.ReLU(inplace=True),
            nn.Linear(w.fc1, w.fc2),
            nn.ReLU(inplace=True),
            nn.Linear(w.fc2, num_classes),  # (N, 10) logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class RawPixelsLeNet5(nn.Module):
    """A `LeNet5` that takes raw 0-255 pixels of any dtype and normalizes them itself."""

    def __init__(self, net: LeNet5, norm: Normalization) -> None:
        super().__init__()
        self.net = net
        self.mean, self.std = norm.mean, norm.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # The arithmetic of `Normalization.apply`, which made the training tensors.
        x = (pixels.float() / 255.0 - self.mean) / self.std  # (N, 1, 28, 28)
        return self.net(x)  # (N, 10)


# The raw-pixel input types a `RawPixelsLeNet5` is exported with (`export.input_dtype`).
RAW_PIXEL_DTYPES = {"float32": torch.float32, "uint8": torch.uint8}


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def widths_of(net: LeNet5) -> Widths:
    """The widths read off the layers, which structured pruning may have changed in place."""
    f, c = net.features, net.classifier
    conv1, conv2 = cast(nn.Conv2d, f[0]), cast(nn.Conv2d, f[3])
    fc1, fc2 = cast(nn.Linear, c[1]), cast(nn.Linear, c[3])
    return Widths(conv1.out_channels, conv2.out_channels, fc1.out_features, fc2.out_features)


def save_model(
    net: nn.Module,
    path: Path,
    meta: dict[str, Any] | None = None,
    plugin: dict[str, Any] | None = None,
) -> None:
    """Save widths, weights and metadata in a file `torch.load(weights_only=True)` can read.

    A `LeNet5` (the built-in model, or a plugin's LeNet-5 of other widths) is saved by its
    widths; any other net needs `plugin`, the model plugin's `{"name", "args"}` that rebuilds it.
    """
    blob: dict[str, Any]
    if type(net) is LeNet5:
        blob = {"widths": asdict(widths_of(net))}
    elif plugin is not None:
        blob = {"plugin": {"name": plugin["name"], "args": dict(plugin.get("args") or {})}}
    else:
        raise StageError(f"a {type(net).__name__} is saved with the model plugin that builds it")
    blob["state_dict"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    blob["meta"] = dict(meta or {})
    write_torch(path, blob)


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The net saved in `path` (a `LeNet5`, or what its model plugin builds) and its metadata."""
    if not path.is_file():
        raise StageError(f"{path} not found: run the stage that produces it first")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net: nn.Module
    if "widths" in blob:
        net = LeNet5(Widths(**blob["widths"]))
    else:
        spec = blob["plugin"]
        try:
            net = plugins.build("model", spec["name"], spec["args"])
        except plugins.PluginError as err:
            raise StageError(f"{path}: {err}") from None
    net.load_state_dict(blob["state_dict"])
    return net.eval(), blob["meta"]


def require_lenet5(net: nn.Module, path: Path, stage: str) -> LeNet5:
    """`net` if it is a `LeNet5`; otherwise the clear refusal of a stage that needs one."""
    if type(net) is not LeNet5:
        raise StageError(
            f"{stage} handles LeNet-5 models only (the built-in `lenet5` model plugin, or a "
            f"plugin that builds a LeNet5 of other widths); {path} holds a "
            f"{type(net).__name__} from a model plugin. Train a LeNet-5, or run the stages "
            "that take any model: evaluate, export and quantize"
        )
    return net


@torch.inference_mode()
def predict_logits(net: nn.Module, images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits (N, 10) in batches on the net's device, back on the CPU: for normalized images
    (N, 1, 28, 28) with a `LeNet5`, for raw pixels with a `RawPixelsLeNet5`."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    out = [
        net(images[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    net.train(was_training)
    return torch.cat(out)


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of `net` on normalized images (eval mode, in batches)."""
    preds = predict_logits(net, images).argmax(dim=1)
    return float((preds == labels.cpu()).float().mean())
