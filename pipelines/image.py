"""The container image of a registered model version, built hermetically and reproducibly.

    python -m pipelines.image build --model lenet5-pruned-int8-onnx#prod [--tag ...] [--base ...]
    python -m pipelines.image base      # a Debian base from Debian's packages, for no registry

`build` resolves the model (`name@version`, `name#stage`, `name@latest` or a file) as
`mnist-serve` does, then prepares a build context outside any container: the serving set of
`uv.lock` installed by `uv pip install --target` for the base image's Python (so the build
itself needs no network: it runs with `--network=none`), this checkout's `mnist_pipeline`, the
model bundle (`serving.bundle`: the model, its version, its card) and a CycloneDX SBOM of
exactly the Python packages in the image, and builds `Containerfile` on it. Every timestamp is
this commit's time (SOURCE_DATE_EPOCH, `--timestamp`) and bytecode is checked by hash, not
mtime. It writes the SBOM and
`image.json` (tag, image ID, layers, labels, sizes) to `--out`. Two builds give the same
image ID: with podman, the Docker-format config is written again without the random build
container buildah names in it (docs/shipping.md, "Reproducible").
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass
from email.parser import HeaderParser
from pathlib import Path

from mnist_pipeline import logs
from mnist_pipeline.errors import UsageError
from mnist_pipeline.serving import bundle, served_model

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "docker.io/library/python:3.12-slim"
DEBIAN_BASE = "localhost/mnist-serve-base:bookworm"
# The wheels' platform: manylinux_2_28 runs on glibc 2.28 and later (Debian 10 on).
PLATFORM = "x86_64-manylinux_2_28"
ENGINE_ENV = "MNIST_IMAGE_ENGINE"  # e.g. "podman --runtime runc --cgroup-manager cgroupfs"
APP_DROP = ("stages", "pipelines", "bin")  # in the wheel, but they need the pipeline extra


@dataclass(frozen=True)
class Image:
    """A built image: its tag, its ID (the digest of its config, which names every layer)."""

    tag: str
    id: str
    labels: dict[str, str]
    size_bytes: int
    serving_layer_bytes: int
    sbom: str
    layers: list[str]  # the diff IDs: the digests of the layers' uncompressed tars


def engine_command(engine: str | None = None) -> list[str]:
    """The container engine to run: `engine`, else $MNIST_IMAGE_ENGINE, else podman or docker."""
    chosen = engine or os.environ.get(ENGINE_ENV)
    if chosen:
        return shlex.split(chosen)
    for name in ("podman", "docker", "buildah"):
        if shutil.which(name):
            return [name]
    raise UsageError("no container engine: install podman (or docker), or set " + ENGINE_ENV)


def _run(argv: list[str], **kwargs: object) -> str:
    log.debug("$ %s", shlex.join(argv))
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise UsageError(f"{shlex.join(argv[:4])} ... failed: {done.stderr.strip()[-2000:]}")
    return str(done.stdout)


def commit_time(repo: Path) -> int:
    """SOURCE_DATE_EPOCH: the commit's time, so every timestamp in the image is one fixed one."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    return int(_run(["git", "-C", str(repo), "log", "-1", "--format=%ct"]).strip())


def base_python(engine: list[str], base: str) -> str:
    """The base image's Python version (X.Y.Z), asked of the image itself, with no network."""
    code = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
    out = _run([*engine, "run", "--rm", "--network=none", base, "python3", "-c", code])
    version = out.strip().splitlines()[-1]
    if not re.fullmatch(r"3\.(1[1-9])\.\d+", version):
        raise UsageError(f"base image {base}: Python {version}; mnist-serve needs 3.11 or later")
    return version


def install_serving_set(dest: Path, python: str) -> None:
    """`deps/` and `app/` of the context: the serving set of uv.lock and this checkout's
    package, installed outside the build for the base image's Python and platform."""
    req = dest / "requirements.txt"
    _run(
        ["uv", "export", "--locked", "--no-default-groups", "--no-emit-project", "--quiet",
         "--format", "requirements.txt", "--output-file", str(req)],
        cwd=ROOT,
    )  # fmt: skip
    # --no-config: the project's [tool.uv] constraints are for resolving; this installs a lock.
    target = ["--python-version", python, "--python-platform", PLATFORM, "--link-mode", "copy"]
    target += ["--no-config", "--quiet", "--no-deps"]
    _run(["uv", "pip", "install", "--only-binary", ":all:", "--require-hashes",
          "--target", str(dest / "deps"), *target, "-r", str(req)])  # fmt: skip
    req.unlink()
    with tempfile.TemporaryDirectory(prefix="mnist-wheel-") as tmp:
        _run(["uv", "build", "--quiet", "--wheel", "--out-dir", tmp, str(ROOT)])
        wheel = next(Path(tmp).glob("*.whl"))
        _run(["uv", "pip", "install", "--target", str(dest / "app"), *target, str(wheel)])
    for name in APP_DROP:
        shutil.rmtree(dest / "app" / name, ignore_errors=True)
    shutil.rmtree(dest / "deps" / "bin", ignore_errors=True)  # scripts for the host's Python
    # Where the wheel was installed from (a temp path), and uv's notes on it: they differ from
    # build to build and are not the image's; RECORD then lists what is there.
    for extra in (*dest.glob("*/*.dist-info/direct_url.json"), *dest.glob("*/*.dist-info/uv_*")):
        extra.unlink()
    for record in dest.glob("*/*.dist-info/RECORD"):
        site = record.parents[1]
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(x for x in lines if (site / x.split(",")[0]).exists()))


def installed(site: Path) -> dict[str, str]:
    """{normalized name: version} of the distributions installed in `site`."""
    found = {}
    for meta in site.glob("*.dist-info/METADATA"):
        fields = HeaderParser().parsestr(meta.read_text(errors="replace"))
        found[re.sub(r"[-_.]+", "-", fields["Name"]).lower()] = fields["Version"]
    return found


def sbom(context: Path, info: dict, epoch: int) -> dict:
    """The CycloneDX SBOM of the image's Python packages, from uv.lock (uv exports it): only
    the versions installed in `deps/` (the lock holds some for other Pythons), the model as a
    component, and no clock or random serial number, so it is the same for the same image."""
    out = _run(
        ["uv", "export", "--locked", "--no-default-groups", "--format", "cyclonedx1.5",
         "--preview-features", "sbom-export", "--quiet"],
        cwd=ROOT,
    )  # fmt: skip
    doc = json.loads(out)
    have = {**installed(context / "deps"), **installed(context / "app")}
    doc["components"] = [
        c for c in doc["components"] if have.get(c["name"].lower()) == c.get("version")
    ]
    project = doc["metadata"]["component"]  # this package: the SBOM's subject
    listed = {c["name"].lower() for c in doc["components"]} | {project["name"]}
    missing = set(have) - listed
    if missing:
        raise UsageError(f"installed but not in the SBOM from uv.lock: {sorted(missing)}")
    doc["components"].append(
        {
            "type": "machine-learning-model",
            "bom-ref": f"model:{info['name']}@{info['version']}",
            "name": info["name"],
            "version": info["version"] or info["sha256"][:12],
            "hashes": [{"alg": "SHA-256", "content": info["sha256"]}],
            "properties": [
                {"name": k, "value": str(info[k])} for k in ("stage", "commit", "source")
            ],
        }
    )
    doc["metadata"]["timestamp"] = _iso(epoch)
    del doc["serialNumber"]  # a random one: named after the content instead
    doc["serialNumber"] = uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(doc, sort_keys=True)).urn
    return dict(doc)


def _iso(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _normalize(folder: Path) -> None:
    """Modes that do not depend on the umask: files 0644 (0755 if executable), folders 0755."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)


def prepare_context(context: Path, spec: str, repo: str, python: str, epoch: int) -> dict:
    """The build context for the model `spec` names; returns the model bundle's `model.json`."""
    source, data = served_model.read_resolved(served_model.ModelSpec(spec, repo))
    card = served_model.find_card(source, repo)
    origin = repo if "://" in repo else _origin(Path(repo))
    fields = {
        "name": source.artifact or source.path.name,
        "version": source.version,
        "stage": source.stage,
        "commit": source.commit,
        "source": origin,
    }
    beside = source.path.parent / bundle.PROFILE  # where resolving a version leaves it
    profile = beside.read_bytes() if beside.is_file() else None
    info = bundle.write(context / "model", fields, data, card, profile)
    install_serving_set(context, python)
    shutil.copy(ROOT / "Containerfile", context / "Containerfile")
    doc = sbom(context, info, epoch)
    (context / "sbom.cdx.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    _normalize(context)
    return info


def _origin(repo: Path) -> str:
    try:
        return _run(["git", "-C", str(repo), "remote", "get-url", "origin"]).strip()
    except UsageError:  # no remote: the path it was built from
        return str(repo.resolve())


def default_tag(info: dict) -> str:
    version = info["version"] or "sha256-" + info["sha256"][:12]
    return f"localhost/mnist-serve-{info['name'].replace('.', '-').lower()}:{version}"


def build(
    spec: str,
    repo: str = ".",
    tag: str | None = None,
    base: str = DEFAULT_BASE,
    out: Path | None = None,
    engine: str | None = None,
    no_cache: bool = False,
) -> Image:
    """Build the image of the model `spec` names; its SBOM and `image.json` go to `out`.
    `no_cache`: build every layer again (the reproducibility check)."""
    cmd = engine_command(engine)
    epoch = commit_time(ROOT)
    revision = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).strip()
    python = base_python(cmd, base)
    with tempfile.TemporaryDirectory(prefix="mnist-image-") as tmp:
        context = Path(tmp)
        info = prepare_context(context, spec, repo, python, epoch)
        tag = tag or default_tag(info)
        args = {
            "BASE": base,
            "MODEL_NAME": info["name"],
            "MODEL_VERSION": info["version"] or "",
            "MODEL_STAGE": info["stage"] or "",
            "MODEL_SHA256": info["sha256"],
            "MODEL_COMMIT": info["commit"] or "",
            "GIT_REVISION": revision,
            "SOURCE": info["source"],
            "CREATED": _iso(epoch),
        }
        argv = [*cmd, "build", "--network=none", "--tag", tag, "--file", "Containerfile"]
        argv += [f"--build-arg={k}={v}" for k, v in args.items()]
        argv += ["--no-cache"] if no_cache else []
        if Path(cmd[0]).name in ("podman", "buildah"):
            # docker format: OCI image configs have no HEALTHCHECK. --timestamp: one fixed time
            # for the image and every file in its layers. --omit-history: buildah's history
            # names each step's intermediate image, whose ID holds the time it was made.
            argv += ["--format", "docker", "--timestamp", str(epoch), "--omit-history"]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        _run([*argv, str(context)], env=env)
        if Path(cmd[0]).name == "podman":
            without_build_container(cmd, tag)
        image = inspect(cmd, tag, json.loads((context / "sbom.cdx.json").read_text()))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(context / "sbom.cdx.json", out / "sbom.cdx.json")
            (out / "image.json").write_text(json.dumps(asdict(image), indent=2) + "\n")
    log.info("built %s (%s) for %s@%s", tag, image.id, info["name"], info["version"])
    return image


def without_build_container(cmd: list[str], tag: str) -> str:
    """Tag `tag` on the same image with a config that does not name buildah's build container,
    and return its ID. In Docker's format buildah writes the random ID of the container it built
    in as `container` and as the `Hostname` of `config` and `container_config`: the only
    difference between two builds, and the config's digest is the image ID. So the image is
    saved as a folder, the config rewritten without them and loaded again (its layers are
    already stored: only the new config is written), and the old image removed unless
    another tag names it."""
    with tempfile.TemporaryDirectory(prefix="mnist-image-config-") as tmp:
        folder = Path(tmp) / "image"
        _run([*cmd, "save", "--quiet", "--format", "docker-dir", "--output", str(folder), tag])
        manifest = json.loads((folder / "manifest.json").read_text())
        old = manifest["config"]["digest"]
        config = json.loads((folder / old.removeprefix("sha256:")).read_text())
        config.pop("container", None)
        for part in ("config", "container_config"):
            if isinstance(config.get(part), dict):
                config[part]["Hostname"] = ""
        raw = json.dumps(config, separators=(",", ":")).encode()
        new = "sha256:" + hashlib.sha256(raw).hexdigest()
        if new == old:
            return new
        (folder / new.removeprefix("sha256:")).write_bytes(raw)
        manifest["config"].update(digest=new, size=len(raw))
        (folder / "manifest.json").write_text(json.dumps(manifest))
        _run([*cmd, "load", "--quiet", "--input", str(folder)])
    _run([*cmd, "tag", new.removeprefix("sha256:"), tag])
    subprocess.run([*cmd, "rmi", old.removeprefix("sha256:")], capture_output=True)
    return new


def inspect(cmd: list[str], tag: str, doc: dict) -> Image:
    """The image's ID, labels and size, and the size of its serving layer (`deps/`, with its
    bytecode; as `du` counts it inside the image: the history that names layers is omitted)."""
    meta = json.loads(_run([*cmd, "image", "inspect", tag]))[0]
    du = [
        "run",
        "--rm",
        "--network=none",
        "--entrypoint",
        "du",
        tag,
        "-sb",
        "/opt/mnist-serve/deps",
    ]
    return Image(
        tag=tag,
        id=meta["Id"] if meta["Id"].startswith("sha256:") else "sha256:" + meta["Id"],
        labels=meta["Config"]["Labels"] or {},
        size_bytes=int(meta["Size"]),
        serving_layer_bytes=int(_run([*cmd, *du]).split()[0]),
        sbom=hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest(),
        layers=list(meta["RootFS"]["Layers"]),
    )


def debian_base(tag: str = DEBIAN_BASE, suite: str = "bookworm", engine: str | None = None) -> str:
    """A base image from Debian's packages, for machines with no image registry: a minbase
    Debian with python3 by mmdebstrap (reproducible under SOURCE_DATE_EPOCH), imported."""
    cmd = engine_command(engine)
    with tempfile.TemporaryDirectory(prefix="mnist-base-") as tmp:
        tar = Path(tmp) / "base.tar"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(commit_time(ROOT))}
        _run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3", suite, str(tar)],
             env=env)  # fmt: skip
        _run([*cmd, "import", str(tar), tag])
    return tag


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.image", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image of a model version")
    b.add_argument("--model", required=True, help="name@v1.2.0, name#prod, name@latest, a file")
    b.add_argument(
        "--repo", default=".", help="git repo (path or URL) whose registry --model names"
    )
    b.add_argument("--tag", help="image tag (default: localhost/mnist-serve-<name>:<version>)")
    b.add_argument("--base", default=DEFAULT_BASE, help=f"base image (default {DEFAULT_BASE})")
    b.add_argument(
        "--out", type=Path, default=Path("image"), help="where the SBOM and image.json go"
    )
    b.add_argument(
        "--engine", help=f"podman, docker, buildah, with options (default ${ENGINE_ENV})"
    )
    d = sub.add_parser("base", help="a Debian base image by mmdebstrap, for no registry")
    d.add_argument("--tag", default=DEBIAN_BASE)
    d.add_argument("--suite", default="bookworm")
    d.add_argument(
        "--engine", help=f"podman, docker, buildah, with options (default ${ENGINE_ENV})"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup_logging()
    try:
        if args.command == "base":
            print(debian_base(args.tag, args.suite, args.engine))
        else:
            image = build(args.model, args.repo, args.tag, args.base, args.out, args.engine)
            print(f"{image.tag} {image.id}")
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
