"""ONNX graphs evaluated with PyTorch: the portable reference for every figure that is hashed.

ONNX Runtime picks its kernels by CPU (MLAS has AVX2, AVX-512, VNNI and AMX paths, each with
its own summation order and, for int8, its own saturation), and nothing pins them. So the
ONNX models' results that land in `metrics/` (the test accuracies of the float and the INT8
models, the INT8 model's agreement with the float one) and the activation ranges that INT8
calibration writes into the model file are computed here instead: each node as the ONNX
operator defines it, with PyTorch's kernels under the portable profile
(`mnist_pipeline.compute`), which give the same bits on any x86-64 CPU with AVX2. ONNX
Runtime's own figures are measurements, kept beside the timings.

Only the operators this project's graphs use are implemented (the exporter's float graphs,
ONNX Runtime's QDQ graphs and its calibration graphs); any other raises `NotImplementedError`
naming it. onnx2torch, the library that converts ONNX to PyTorch, has no QuantizeLinear or
DequantizeLinear, and ONNX's own `ReferenceEvaluator` computes with numpy, whose matrix
products go through OpenBLAS kernels chosen by CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

# The inputs of a node; an optional input left out is None (only where the op allows it).
Op = Callable[[list[Any], dict[str, Any]], torch.Tensor]
_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
}
_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int32: (-(2**31), 2**31 - 1)}


def _pads(attrs: dict[str, Any], dims: int) -> list[int]:
    """ONNX pads (begin..., end...) as F.pad's (last dim first, begin then end)."""
    pads = list(attrs.get("pads", [0] * 2 * dims))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("auto_pad")
    out: list[int] = []
    for d in reversed(range(dims)):
        out += [pads[d], pads[d + dims]]
    return out


def _padded(x: torch.Tensor, pads: list[int], value: float = 0.0) -> torch.Tensor:
    return F.pad(x, pads, value=value) if any(pads) else x  # no copy when there is no padding


def _conv(x: list, a: dict) -> torch.Tensor:
    inp, w = x[0], x[1]
    inp = _padded(inp, _pads(a, w.dim() - 2))
    return F.conv2d(
        inp, w, x[2] if len(x) > 2 else None,
        stride=a.get("strides", 1), dilation=a.get("dilations", 1), groups=a.get("group", 1),
    )  # fmt: skip


def _max_pool(x: list, a: dict) -> torch.Tensor:
    if a.get("storage_order", 0):
        raise NotImplementedError("MaxPool storage_order=1")
    k = a["kernel_shape"]
    inp = _padded(x[0], _pads(a, len(k)), value=float("-inf"))
    return F.max_pool2d(
        inp, k, stride=a.get("strides", 1), dilation=a.get("dilations", 1),
        ceil_mode=bool(a.get("ceil_mode", 0)),
    )  # fmt: skip


def _gemm(x: list, a: dict) -> torch.Tensor:
    m, w = x[0], x[1]
    if a.get("transA", 0):
        m = m.t()
    if not a.get("transB", 0):
        w = w.t()
    if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise NotImplementedError("Gemm with alpha or beta other than 1")
    # F.linear, as nn.Linear computes it: the exported graph gives the PyTorch model's bits.
    return F.linear(m, w, x[2] if len(x) > 2 else None)


def _axis_view(t: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """A per-axis scale or zero point shaped to broadcast along `axis` of `like`."""
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * like.dim()
    shape[axis % like.dim()] = t.numel()
    return t.reshape(shape)


def _quantize(x: list, a: dict) -> torch.Tensor:
    """y = saturate(round(x / scale) + zero_point), ties to even (ONNX QuantizeLinear)."""
    axis = a.get("axis", 1)
    scale = _axis_view(x[1], x[0], axis)
    zp = x[2] if len(x) > 2 and x[2] is not None else torch.zeros((), dtype=torch.uint8)
    low, high = _RANGES[zp.dtype]
    q = torch.div(x[0], scale).round_().add_(_axis_view(zp, x[0], axis).to(torch.float32))
    return q.clamp_(low, high).to(zp.dtype)


def _dequantize(x: list, a: dict) -> torch.Tensor:
    """y = (x - zero_point) * scale (ONNX DequantizeLinear), the difference taken exactly."""
    axis = a.get("axis", 1)
    zp = _axis_view(
        x[2] if len(x) > 2 and x[2] is not None else torch.zeros((), dtype=x[0].dtype),
        x[0],
        axis,
    )
    scale = _axis_view(x[1], x[0], axis)
    if x[0].dtype in (torch.int8, torch.uint8):
        # Differences of 8-bit integers are exact in float32: no int64 detour.
        return x[0].to(torch.float32).sub_(zp.to(torch.float32)).mul_(scale)
    return (x[0].to(torch.int64) - zp.to(torch.int64)).to(torch.float32) * scale


def _reshape(x: list, a: dict) -> torch.Tensor:
    shape = [int(s) for s in x[1].tolist()]
    if not a.get("allowzero", 0):
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x[0].reshape(shape)


def _reduce(fn: Callable[..., torch.Tensor]) -> Op:
    def op(x: list, a: dict) -> torch.Tensor:
        axes = x[1].tolist() if len(x) > 1 and x[1] is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if not axes:
            out = fn(x[0])
            return out.reshape([1] * x[0].dim()) if keep else out
        return fn(x[0], dim=tuple(int(d) for d in axes), keepdim=keep)

    return op


OPS: dict[str, Op] = {
    "Add": lambda x, a: x[0] + x[1],
    "Sub": lambda x, a: x[0] - x[1],
    "Mul": lambda x, a: x[0] * x[1],
    "Div": lambda x, a: x[0] / x[1],
    "Relu": lambda x, a: torch.relu(x[0]),
    "Identity": lambda x, a: x[0],
    "Flatten": lambda x, a: torch.flatten(x[0], a.get("axis", 1) % max(x[0].dim(), 1)),
    "Cast": lambda x, a: x[0].to(_DTYPES[a["to"]]),
    "Conv": _conv,
    "MaxPool": _max_pool,
    "Gemm": _gemm,
    "Reshape": _reshape,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "ReduceMin": _reduce(torch.amin),
    "ReduceMax": _reduce(torch.amax),
}


@dataclass(frozen=True)
class NodeArg:
    """A graph input or output, as `onnxruntime.NodeArg` names it."""

    name: str


class ReferenceSession:
    """Runs an ONNX model node by node with PyTorch; `run` as `onnxruntime.InferenceSession`'s."""

    def __init__(self, model: onnx.ModelProto | Path | str) -> None:
        self.model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        graph = self.model.graph
        missing = sorted({n.op_type for n in graph.node} - OPS.keys() - {"Constant"})
        if missing:
            raise NotImplementedError(f"ONNX operators without a reference: {missing}")
        self._consts = {
            i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer
        }
        inits = set(self._consts)
        self._inputs = [NodeArg(i.name) for i in graph.input if i.name not in inits]
        self._outputs = [NodeArg(o.name) for o in graph.output]

    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    @torch.inference_mode()
    def run(
        self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        values: dict[str, torch.Tensor | None] = {"": None, **self._consts}
        values |= {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        for node in self.model.graph.node:
            if node.op_type == "Constant":
                values[node.output[0]] = torch.from_numpy(
                    numpy_helper.to_array(node.attribute[0].t).copy()
                )
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            values[node.output[0]] = OPS[node.op_type]([values[i] for i in node.input], attrs)
        names = output_names or [o.name for o in self._outputs]
        return [values[n].numpy() for n in names]  # type: ignore[union-attr]


def logits(sess: ReferenceSession, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (N, 10) for raw pixels (N, 1, 28, 28), in batches, as `runtime.logits`."""
    (name,) = (i.name for i in sess.get_inputs())
    out = sess.get_outputs()[0].name
    return np.concatenate(
        [
            sess.run([out], {name: pixels[i : i + batch_size]})[0]
            for i in range(0, len(pixels), batch_size)
        ]
    )
