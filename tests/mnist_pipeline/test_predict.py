"""The predict CLI: images of any size and polarity become MNIST-style digits, bad files are
reported without stopping the others, and the exit code says whether all succeeded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline.onnx import runtime
from mnist_pipeline.serving import predict
from tests.conftest import ROOT


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)
    return path


def _canonical(tmp_path: Path, pixels: np.ndarray) -> np.ndarray:
    return predict.load_digit(_png(tmp_path / "src.png", pixels))


def test_digits_are_fitted_into_20x20_and_centred_by_mass(tmp_path: Path) -> None:
    # An off-centre, wide, dark-on-light stroke in a 100x60 image.
    img = np.full((60, 100), 230, dtype=np.uint8)  # grey paper
    img[10:20, 5:65] = 20  # a 10x60 bar
    img[10:40, 55:65] = 20  # and a 30x10 leg: a "7"
    x = predict.load_digit(_png(tmp_path / "seven.png", img))
    assert x.shape == (28, 28) and x.dtype == np.uint8
    rows, cols = np.nonzero(x > predict.INK_THRESHOLD)
    width, height = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    assert width == 20 and height == 10  # aspect ratio 60:30 kept, long side 20
    ys, xs = np.indices(x.shape)
    w = x.astype(float) / x.sum()
    assert abs((ys * w).sum() - 14) <= 0.5 and abs((xs * w).sum() - 14) <= 0.5  # as MNIST
    assert x.max() == 255 and x[0].max() == 0  # ink at full scale, background black


def test_polarity_size_and_position_do_not_change_the_input(
    tmp_path: Path, digits: list[np.ndarray]
) -> None:
    for i, d in enumerate(digits):
        c = _canonical(tmp_path, d)
        light = predict.load_digit(_png(tmp_path / f"{i}l.png", c))
        dark = predict.load_digit(_png(tmp_path / f"{i}d.png", 255 - c))
        canvas = np.full((60, 100), 255, dtype=np.uint8)  # 100 wide, 60 high, white
        canvas[20:48, 60:88] = 255 - c
        moved = predict.load_digit(_png(tmp_path / f"{i}m.png", canvas))
        assert np.array_equal(light, dark) and np.array_equal(light, moved)
        # Three times larger: resampled back to nearly the same pixels.
        big = np.kron(c, np.ones((3, 3), dtype=np.uint8))
        scaled = predict.load_digit(_png(tmp_path / f"{i}s.png", big))
        assert np.abs(scaled.astype(int) - light.astype(int)).mean() < 12
        # Forced to the wrong polarity, the ink is taken for background.
        with pytest.raises(predict.ImageError, match="polarity"):
            predict.load_digit(_png(tmp_path / f"{i}f.png", c), "dark-on-light")


def test_transparent_background_is_background(tmp_path: Path) -> None:
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)  # transparent black everywhere
    rgba[5:35, 18:22] = (0, 0, 0, 255)  # an opaque black "1"
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "one.png")
    x = predict.load_digit(tmp_path / "one.png")
    rows, cols = np.nonzero(x > predict.INK_THRESHOLD)
    assert rows.max() - rows.min() + 1 == 20 and cols.max() - cols.min() + 1 <= 4


def test_blank_image_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(predict.ImageError, match="blank"):
        predict.load_digit(_png(tmp_path / "blank.png", np.full((28, 28), 200)))


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = predict.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_classifies_good_files_and_reports_bad_ones(
    tmp_path: Path,
    onnx_model: Path,
    digits: list[np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sess = runtime.session(onnx_model)
    files: list[Path] = []
    expected: dict[str, int] = {}
    for i, d in enumerate(digits):
        c = _canonical(tmp_path, d)
        # The reference goes through the same file reading as the CLI: light, dark and moved
        # copies must read to the same pixels (see the test above), so to the same digit.
        (ref,) = predict.classify(sess, [_canonical(tmp_path, c)], ["ref"])
        canvas = np.full((60, 100), 255, dtype=np.uint8)
        canvas[5:33, 10:38] = 255 - c
        for name, pixels in ((f"{i}_light.png", c), (f"{i}_dark.png", 255 - c)):
            files.append(_png(tmp_path / name, pixels))
        Image.fromarray(canvas).save(tmp_path / f"{i}_wide.jpg", quality=100)
        files.append(tmp_path / f"{i}_wide.jpg")
        expected |= {str(f): ref.digit for f in files[-3:]}
    good = files[0].read_bytes()
    (tmp_path / "corrupt.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.png").write_text("not an image at all\n")
    bad = [tmp_path / "corrupt.png", tmp_path / "notes.png", tmp_path / "missing.png"]
    order = files[:3] + bad + files[3:]

    code, out, err = _cli(["--model", onnx_model, *order], capsys)
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == len(files)
    for line in lines:
        name, rest = line.split(": ")
        digit, prob = rest.split(" (p=")
        assert 0.1 <= float(prob.rstrip(")")) <= 1
        # JPEG is lossy and the synthetic "digits" are noise patterns, not strokes: a JPEG copy
        # must be read and classified, the lossless copies must give the reference digit.
        if not name.endswith(".jpg"):
            assert int(digit) == expected[name]
    assert f"error: {bad[0]}: cannot read the image" in err
    assert f"error: {bad[1]}: not an image file" in err
    assert f"error: {bad[2]}: no such file" in err

    code, out, _ = _cli(["--model", onnx_model, "--json", *order], capsys)
    assert code == 1
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(f) for f in order]
    for r in results:
        if Path(r["file"]) in bad:
            assert set(r) == {"file", "error"}
        else:
            assert r["digit"] == expected[r["file"]]
            assert sum(r["probabilities"]) == pytest.approx(1, abs=1e-4)
            assert r["probability"] == pytest.approx(max(r["probabilities"]), abs=1e-6)

    code, _, _ = _cli(["--model", onnx_model, *files], capsys)
    assert code == 0


def test_cli_usage_errors_exit_2(
    tmp_path: Path, onnx_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = _png(tmp_path / "x.png", np.eye(28) * 255)
    code, _, err = _cli(["--model", tmp_path / "none.onnx", img], capsys)
    assert code == 2 and "not found" in err
    (tmp_path / "bad.onnx").write_text("nope")
    code, _, err = _cli(["--model", tmp_path / "bad.onnx", img], capsys)
    assert code == 2 and "cannot load model" in err
    with pytest.raises(SystemExit) as exc:
        predict.main(["--model", str(onnx_model)])  # no images
    assert exc.value.code == 2


def test_runs_as_a_module_without_importing_torch(onnx_model: Path, tmp_path: Path) -> None:
    img = _png(tmp_path / "x.png", np.eye(28) * 255)
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['mnist-predict', '--model', {str(onnx_model)!r}, {str(img)!r}]\n"
        "try:\n"
        "    runpy.run_module('mnist_pipeline.serving.predict', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'predict must not import torch'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{img}: ")


def _declared_size_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header declares `width` x `height` pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def test_a_decompression_bomb_is_refused_and_the_other_files_classified(
    tmp_path: Path, onnx_model: Path, digits: list[np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    # Past Pillow's own limit, and past ours though Pillow would only warn.
    huge = _declared_size_png(tmp_path / "huge.png", 30_000, 30_000)
    big = _declared_size_png(tmp_path / "big.png", 10_000, 10_000)
    assert huge.stat().st_size < 200 and big.stat().st_size < 200
    good = _png(tmp_path / "good.png", _canonical(tmp_path, digits[0]))
    code, out, err = _cli(["--model", onnx_model, huge, big, good], capsys)
    assert code == 1
    assert "huge.png: refused as a decompression bomb" in err
    assert "big.png: the image is 10000x10000 pixels, more than the 16,777,216 allowed" in err
    assert "Traceback" not in err and out.startswith(f"{good}: ")
