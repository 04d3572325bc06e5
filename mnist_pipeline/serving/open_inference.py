"""The Open Inference Protocol (KServe v2, REST), beside `/predict`: what Triton, KServe,
Seldon MLServer and TorchServe speak, so their clients (`tritonclient.http`, say) and gateways
work with `mnist-serve`.

    GET  /v2                                   server metadata: name, version, extensions
    GET  /v2/health/live, /v2/health/ready     200 or 503, as /healthz and /readyz
    GET  /v2/models/{name}[/versions/{v}]      model metadata: versions, inputs, outputs
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

The model's name is `GET /model`'s; its one version is the registered version when it was
served as `name@version` or `name#stage`, else the first 12 hex digits of its sha256 (a file
has no version of its own, and its bytes name it stably). The input `pixels` is
`[-1, 1, 28, 28]` raw 0-255 pixels, UINT8 or FP32 as the model takes them (either is
accepted); the outputs are `probabilities` FP32 `[-1, 10]` and `digit` INT64 `[-1]`. Tensors
come as JSON `data` (flat or nested, row-major) or in the binary tensor data extension
(`Inference-Header-Content-Length`), which tritonclient uses by default; outputs go back as
binary when asked (`binary_data` per output, or `binary_data_output`). Every check is made
before NumPy converts anything, and a refusal is `{"error": ...}` with 400 (bad tensor), 404
(unknown model or version), 413 (too many digits) or 503 (no model yet). The response's
`parameters.prediction_ids` holds the feedback ids, comma-separated (`POST /feedback`).
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mnist_pipeline.onnx import runtime
from mnist_pipeline.serving import predict
from mnist_pipeline.serving.inputs import BadInput
from mnist_pipeline.serving.limits import Limits
from mnist_pipeline.serving.outcomes import Outcomes
from mnist_pipeline.serving.served_model import ModelSlot, ServedModel

HEADER_LENGTH = "inference-header-content-length"
DATATYPES: dict[str, np.dtype] = {"UINT8": np.dtype(np.uint8), "FP32": np.dtype("<f4")}
OUTPUTS = {"probabilities": ("FP32", np.dtype("<f4")), "digit": ("INT64", np.dtype("<i8"))}
PIXELS = predict.FIELD * predict.FIELD
MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
HANDLERS = {"/v2", "/v2/health/live", "/v2/health/ready"} | {
    base + tail for base in (MODEL, VERSION) for tail in ("", "/ready", "/infer")
}


def version_of(model: ServedModel) -> str:
    return model.info.version or model.info.sha256[:12]


def metadata(model: ServedModel) -> dict[str, Any]:
    """A model's metadata, as the protocol states it."""
    datatype = "UINT8" if runtime.input_dtype(model.sess) is np.uint8 else "FP32"
    outputs = [
        {"name": n, "datatype": t, "shape": [-1, 10] if n == "probabilities" else [-1]}
        for n, (t, _) in OUTPUTS.items()
    ]
    return {
        "name": model.info.name,
        "versions": [version_of(model)],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": runtime.INPUT_NAME, "datatype": datatype, "shape": [-1, 1, 28, 28]}],
        "outputs": outputs,
    }


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The request's JSON object and the binary tensor data after it."""
    if header_length is None:
        head, rest = body, b""
    elif not header_length.isdigit() or int(header_length) > len(body):
        raise BadInput(
            400,
            f"Inference-Header-Content-Length {header_length[:20]!r} is not "
            f"a length within the body's {len(body)} bytes",
        )
    else:
        head, rest = body[: int(header_length)], body[int(header_length) :]
    try:
        request = json.loads(head)
    except (ValueError, RecursionError):
        raise BadInput(400, "the inference request is not valid JSON") from None
    if not isinstance(request, dict):
        raise BadInput(400, "the inference request must be a JSON object")
    return request, rest


def flat_values(data: Any, count: int, datatype: str) -> list[int | float]:
    """`data`, flat or nested, as `count` raw pixel values, walked in Python before NumPy sees
    it: never deeper than the shape, never more values than it holds."""
    values: list[int | float] = []
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= 4:
                raise BadInput(400, "data is nested deeper than its shape, [N, 1, 28, 28]")
            if len(values) + len(item) > count:
                raise BadInput(400, f"data does not match the shape: more than {count} values")
            stack.extend((x, depth + 1) for x in reversed(item))
        elif type(item) is int or (type(item) is float and datatype == "FP32"):
            if not 0 <= item <= 255:  # NaN fails this too
                raise BadInput(400, "pixels must be raw values between 0 and 255")
            values.append(item)
        else:
            raise BadInput(400, f"{datatype} data must be numbers, not {type(item).__name__}")
    if len(values) != count:
        raise BadInput(400, f"data has {len(values)} values; the shape needs {count}")
    return values


def read_pixels(request: dict[str, Any], binary: bytes, limits: Limits) -> np.ndarray:
    """The request's `pixels` tensor as (N, 28, 28), uint8 or float32 as it was sent."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadInput(400, f"expected one input, {runtime.INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != runtime.INPUT_NAME:
        raise BadInput(400, f"unknown input {tensor.get('name')!r:.80}; expected 'pixels'")
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadInput(400, f"datatype {datatype!r:.80}: expected UINT8 or FP32")
    if not (
        isinstance(shape, list)
        and len(shape) == 4
        and all(type(d) is int for d in shape)
        and shape[0] >= 1
        and shape[1:] == [1, predict.FIELD, predict.FIELD]
    ):
        raise BadInput(400, f"shape {shape!r}: expected [N, 1, 28, 28] with N >= 1"[:200])
    n = shape[0]
    if n > limits.max_files:
        raise BadInput(413, f"{n} digits in one request; at most {limits.max_files}")
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    dtype = DATATYPES[datatype]
    if size is None:
        if "data" not in tensor:
            raise BadInput(400, "the input has neither data nor binary_data_size")
        pixels = np.asarray(flat_values(tensor["data"], n * PIXELS, datatype), dtype=dtype)
    else:
        if type(size) is not int or size != len(binary) or size != n * PIXELS * dtype.itemsize:
            raise BadInput(
                400,
                f"binary_data_size {size!r}: {n} {datatype} digits are "
                f"{n * PIXELS * dtype.itemsize} bytes, and {len(binary)} came",
            )
        pixels = np.frombuffer(binary, dtype=dtype)
        if datatype == "FP32" and not ((pixels >= 0) & (pixels <= 255)).all():  # NaN too
            raise BadInput(400, "pixels must be raw values between 0 and 255")
    if size is None and binary:
        raise BadInput(400, f"{len(binary)} bytes of binary data that no input claims")
    return pixels.reshape(n, predict.FIELD, predict.FIELD)


def wanted_outputs(request: dict[str, Any]) -> list[tuple[str, bool]]:
    """(name, binary) of each output to answer, as the request's `outputs` asks."""
    params = request.get("parameters") or {}
    binary_all = isinstance(params, dict) and params.get("binary_data_output") is True
    asked = request.get("outputs")
    if asked is None:
        return [(name, binary_all) for name in OUTPUTS]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise BadInput(400, "outputs must be a list of {name, parameters}")
    wanted = []
    for out in asked:
        if not isinstance(out.get("name"), str) or out["name"] not in OUTPUTS:
            raise BadInput(400, f"unknown output {out.get('name')!r:.80}; {sorted(OUTPUTS)} exist")
        p = out.get("parameters") or {}
        wanted.append(
            (out["name"], binary_all or (isinstance(p, dict) and p.get("binary_data") is True))
        )
    return wanted


def response(
    model: ServedModel,
    request: dict[str, Any],
    probs: np.ndarray,
    ids: list[str],
    wanted: list[tuple[str, bool]],
) -> Response:
    """The inference response, JSON or with binary outputs after the JSON header."""
    values = {"probabilities": probs.astype("<f4"), "digit": probs.argmax(axis=1).astype("<i8")}
    outputs, chunks = [], []
    for name, binary in wanted:
        array = values[name]
        out: dict[str, Any] = {
            "name": name,
            "datatype": OUTPUTS[name][0],
            "shape": list(array.shape),
        }
        if binary:
            chunks.append(array.tobytes())
            out["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            out["data"] = array.ravel().tolist()
        outputs.append(out)
    body: dict[str, Any] = {"model_name": model.info.name, "model_version": version_of(model)}
    if isinstance(request.get("id"), str):
        body["id"] = request["id"]
    if any(ids):
        body["parameters"] = {"prediction_ids": ",".join(ids)}
    body["outputs"] = outputs
    if not chunks:
        return JSONResponse(body)
    head = json.dumps(body).encode()
    return Response(
        head + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def router(slot: ModelSlot, outcomes: Outcomes, limits: Limits, readiness: Any) -> APIRouter:
    """`readiness()`: "ready", or why not ("loading", "draining"), as `/readyz` says."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])

    def served(name: str, version: str | None = None) -> ServedModel:
        model = slot.current
        if model is None:
            raise BadInput(503, "no model is loaded yet: see /v2/health/ready")
        if name != model.info.name:
            raise BadInput(404, f"unknown model {name!r}; this server serves {model.info.name!r}")
        if version is not None and version != version_of(model):
            raise BadInput(404, f"unknown version {version!r} of {name!r}: {version_of(model)!r}")
        return model

    @router.get("")
    async def server_metadata() -> dict[str, Any]:
        version = importlib.metadata.version("mnist-pipeline")
        return {"name": "mnist-serve", "version": version, "extensions": ["binary_tensor_data"]}

    @router.get("/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        up = readiness() == "ready"
        return JSONResponse({"ready": up}, status_code=200 if up else 503)

    @router.get("/models/{name}")
    @router.get("/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return metadata(served(name, version))

    @router.get("/models/{name}/ready")
    @router.get("/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        served(name, version)
        up = readiness() == "ready"
        return JSONResponse({"name": name, "ready": up}, status_code=200 if up else 503)

    @router.post("/models/{name}/infer")
    @router.post("/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        model = served(name, version)  # once: a swap while this request runs does not change it
        if request.headers.get("content-encoding", "identity") != "identity":
            raise BadInput(415, "send the request uncompressed")
        body, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
        wanted = wanted_outputs(body)
        pixels = read_pixels(body, binary, limits)
        if runtime.input_dtype(model.sess) is np.uint8 and pixels.dtype != np.uint8:
            pixels = np.round(pixels).astype(np.uint8)  # as /predict's JSON is
        names = [f"pixels[{i}]" for i in range(len(pixels))]
        out = await outcomes.classify(model, lambda: (list(pixels), names))
        request.state.batch_size, request.state.model_sha256 = out.run, model.info.sha256
        probs = np.array([p.probabilities for p in out.predictions])  # (N, 10)
        return response(model, body, probs, out.ids, wanted)

    return router
