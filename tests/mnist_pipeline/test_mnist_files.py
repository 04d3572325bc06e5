"""Raw MNIST files: IDX format, mirrors, checksums, retries and the offline override."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.data import mnist_files
from mnist_pipeline.errors import StageError

NAME = "train-labels-idx1-ubyte.gz"


def test_idx_round_trip(tmp_path: Path) -> None:
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for name in ("a.idx", "a.idx.gz"):
        mnist_files.write_idx(tmp_path / name, arr)
        back = mnist_files.read_idx(tmp_path / name)
        assert back.dtype == np.uint8 and back.shape == (2, 28, 28)
        np.testing.assert_array_equal(back, arr)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(StageError, match="bad magic"):
        mnist_files.read_idx(tmp_path / "junk")
    good = tmp_path / "x.idx"
    mnist_files.write_idx(good, np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "cut.idx").write_bytes(good.read_bytes()[:-10])
    with pytest.raises(StageError, match="header says shape"):
        mnist_files.read_idx(tmp_path / "cut.idx")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good.read_bytes())[:-20])
    with pytest.raises(StageError, match="cannot read"):
        mnist_files.read_idx(tmp_path / "cut.gz")


def test_official_files_and_mirrors_are_torchvisions() -> None:
    from torchvision.datasets import MNIST

    assert tuple(MNIST.resources) == mnist_files.FILES
    assert tuple(MNIST.mirrors) == mnist_files.OFFICIAL_MIRRORS
    assert mnist_files.FILES[0][0] == "train-images-idx3-ubyte.gz"


def test_mirror_override_precedence() -> None:
    assert [m.base for m in mnist_files.resolve_mirrors(None, {})] == list(
        mnist_files.OFFICIAL_MIRRORS
    )
    assert [m.base for m in mnist_files.resolve_mirrors("/p", {})] == ["/p"]
    env = {"MNIST_MIRROR": "file:///e"}
    assert [m.base for m in mnist_files.resolve_mirrors("/p", env)] == ["file:///e"]


def test_mirror_locations() -> None:
    assert mnist_files.Mirror("/data/m").locate(NAME) == f"/data/m/{NAME}"
    assert mnist_files.Mirror("file:///data/m/").locate(NAME) == f"/data/m/{NAME}"
    assert mnist_files.Mirror("https://h/m").locate(NAME) == f"https://h/m/{NAME}"
    assert not mnist_files.Mirror("http://h/").is_local and mnist_files.Mirror("~/m").is_local


def _md5(path: Path) -> str:
    return mnist_files.md5sum(path)


def test_fetch_from_folder_and_file_url(tmp_path: Path, synthetic_mirror: Path) -> None:
    md5 = _md5(synthetic_mirror / NAME)
    for i, base in enumerate((str(synthetic_mirror), synthetic_mirror.as_uri())):
        got = mnist_files.fetch_file(NAME, md5, [mnist_files.Mirror(base)], tmp_path / str(i))
        assert _md5(got) == md5


def test_verified_file_is_reused_and_corrupt_one_refetched(
    tmp_path: Path, synthetic_mirror: Path
) -> None:
    md5 = _md5(synthetic_mirror / NAME)
    dest = tmp_path / NAME
    dest.write_bytes(b"truncated")
    mnist_files.fetch_file(NAME, md5, [mnist_files.Mirror(str(synthetic_mirror))], tmp_path)
    assert _md5(dest) == md5
    # Now present and valid: no mirror needed at all.
    mnist_files.fetch_file(NAME, md5, [], tmp_path)


def test_checksum_mismatch_names_file_and_expected_md5(
    tmp_path: Path, synthetic_mirror: Path
) -> None:
    with pytest.raises(StageError) as exc:
        mnist_files.fetch_file(
            NAME, "0" * 32, [mnist_files.Mirror(str(synthetic_mirror))], tmp_path
        )
    msg = str(exc.value)
    assert NAME in msg and "expected md5 " + "0" * 32 in msg and "MNIST_MIRROR" in msg
    assert not list(tmp_path.iterdir()), "a bad download must not be left behind"


def test_missing_mirror_says_how_to_set_one(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="Set MNIST_MIRROR to a folder"):
        mnist_files.fetch_file(
            NAME, "0" * 32, [mnist_files.Mirror(str(tmp_path / "nowhere"))], tmp_path
        )


@pytest.fixture
def flaky_server(synthetic_mirror: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP mirror on 127.0.0.1 that serves a truncated file, then a 503, then the real one."""
    requests: list[str] = []
    body = (synthetic_mirror / NAME).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            if len(requests) == 2:
                self.send_error(503)
                return
            data = body[: len(body) // 2] if len(requests) == 1 else body
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mnist/", requests
    finally:
        server.shutdown()
        server.server_close()


def test_http_mirror_retries_with_backoff(
    tmp_path: Path, synthetic_mirror: Path, flaky_server: tuple[str, list[str]]
) -> None:
    url, requests = flaky_server
    sleeps: list[float] = []
    md5 = _md5(synthetic_mirror / NAME)
    got = mnist_files.fetch_file(
        NAME, md5, [mnist_files.Mirror(url)], tmp_path, retries=3, sleep=sleeps.append
    )
    assert _md5(got) == md5
    assert requests == [f"/mnist/{NAME}"] * 3
    assert (
        len(sleeps) == 2 and 1 <= sleeps[0] <= 2 and 2 <= sleeps[1] <= 4
    )  # exponential, jittered


def test_http_mirror_gives_up_after_retries(
    tmp_path: Path, flaky_server: tuple[str, list[str]]
) -> None:
    url, requests = flaky_server
    with pytest.raises(StageError, match=r"(?s)could not fetch .*attempt 2"):
        mnist_files.fetch_file(
            NAME, "0" * 32, [mnist_files.Mirror(url)], tmp_path, retries=2, sleep=lambda s: None
        )
    assert len(requests) == 2


def test_md5sums_override(tmp_path: Path, synthetic_mirror: Path) -> None:
    env = {"MNIST_MD5SUMS": str(synthetic_mirror / "MD5SUMS")}
    files = dict(mnist_files.expected_files(env))
    assert files[NAME] == _md5(synthetic_mirror / NAME)
    assert mnist_files.expected_files({}) == mnist_files.FILES
    (tmp_path / "sums").write_text(f"abc  {NAME}\n")
    with pytest.raises(StageError, match="no checksum for train-images"):
        mnist_files.expected_files({"MNIST_MD5SUMS": str(tmp_path / "sums")})
