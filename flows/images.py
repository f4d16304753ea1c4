"""Build the images of images/ offline, from their locks (images/locks/), tagged by project version and content.

    rner images build                                   # vllm and trainer (CUDA variants), orchestrator
    rner images build --role vllm --accelerator cpu --base rner-vllm-base:cpu   # a CPU variant (tests)
    rner images wheelhouse --role trainer --accelerator cuda -o /mnt/wheels      # the wheels alone

A build needs no network inside: the project is built into a wheel (the build context's ``project/``), the
variant's locked dependencies are downloaded into ``wheels/`` on this machine (or taken from ``--wheelhouse``)
for the variant's platform and Python — not this machine's — and ``images/install.sh`` installs them with
``--no-index`` into ``/opt/rner`` in the image: the dependencies in one layer, the packages built from source
(flash-attn and DeepSpeed on CUDA: ``sources/``) in the next, the project last, so that an engine which built one
commit's image rebuilds only the project's layer for the next.

Each image is tagged ``<name>:<version>`` and ``<name>:<version>-<content>``, where content hashes the
Dockerfile, the install script, the build arguments (the code version among them: an image names the
commit it was built from, so another commit is another image, even where the files are the same), the pins and
every wheel (the project's by its files, since a wheel's zip timestamps change with every build): the same inputs
give the same tag, and an image whose tag exists already is not built again.

Usage::

    tags = build("vllm", accelerator="cpu", base="rner-vllm-base:0.1.0")  # ['rner-vllm:0.1.0', 'rner-vllm:0.1.0-3f2a…']
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import docker
import typer
from docker.errors import APIError, ContainerError, ImageNotFound
from filelock import FileLock

from flows.locks import Variant, download_sources, minor_version, pins, variant_for
from schemas import canonical_json
from schemas.jobs import IMAGE_VERSION
from tasks.errors import RnerError
from tasks.stage_cli import check_writable
from tasks.store import code_version

IMAGES = Path(__file__).resolve().parent.parent / "images"
REPO = IMAGES.parent
ROLES = ("vllm", "trainer", "orchestrator", "vllm-base")
"""``vllm-base``: the CPU stand-in for the official vLLM image, the base of the CPU ``vllm`` image."""


class ImageBuildError(RnerError):
    """An image could not be built; the message carries the step and the end of its output."""


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise ImageBuildError(f"{what} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def _run(command: list[str], what: str) -> None:
    _check(subprocess.run(command, capture_output=True, text=True), what)


def collect_wheels(variant: Variant, context: Path, wheelhouse: Path | None = None) -> None:
    """The build context's wheels for ``variant``, exactly as its lock (images/locks/) pins them:
    ``project/`` the project's wheel, ``wheels/`` every binary dependency and ``wheels/requirements.txt`` their
    pins, ``sources/`` the source distributions the image compiles after torch (``sources/requirements.txt``;
    empty for CPU variants). Separate folders, because they are separate image layers: a new commit changes the
    project's wheel only, and the dependencies' layers are reused.

    Wheels are downloaded for the variant's platform and Python, not this machine's: a CUDA trainer's
    wheelhouse (Python 3.12, glibc 2.39) is collected here on a CPU machine with Python 3.11."""
    project_dir, wheels, sources = context / "project", context / "wheels", context / "sources"
    for folder in (project_dir, wheels, sources):
        folder.mkdir(parents=True, exist_ok=True)
    # One build of the checkout at a time: setuptools writes build/ and *.egg-info inside it, and two image
    # builds at once (the test fixtures build the trainer and orchestrator images in parallel) break each other.
    with FileLock(Path(tempfile.gettempdir()) / "rner-project-wheel.lock", timeout=1800):
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(project_dir), str(REPO)],
             "pip wheel")  # fmt: skip
    if not variant.path.exists():
        raise ImageBuildError(f"no lock {variant.path}: run `rner images lock --variant {variant.name}`")
    locked = variant.path.read_text()
    binary = [f"{name}=={version}" for name, version in pins(locked).items() if name not in variant.source_built]
    (wheels / "requirements.txt").write_text("".join(f"{pin}\n" for pin in binary))
    # A wheelhouse is a folder of files, or what `rner images wheelhouse` wrote (wheels/ and sources/ in it).
    index = (
        ["--no-index", *(f"--find-links={d}" for d in (wheelhouse, wheelhouse / "wheels", wheelhouse / "sources"))]
        if wheelhouse is not None
        else []
    )
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", *index,
          *target_options(variant), "-d", str(wheels), "-r", str(wheels / "requirements.txt")],
         f"downloading the wheels of {variant.name}")  # fmt: skip
    (sources / "requirements.txt").write_text(
        "".join(f"{p}\n" for p in download_sources(variant, locked, sources, tuple(index)))
    )


def target_options(variant: Variant) -> list[str]:
    """pip's options selecting the wheels ``variant``'s image can load. pip does not widen ``--platform
    manylinux_2_39_x86_64`` to the older glibc tags that base also loads (most wheels are manylinux_2_17 or
    _2_28): every one is named."""
    arch_tag = variant.pip_platform
    glibc, arch = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", arch_tag).groups()  # type: ignore[union-attr]
    platforms = [f"manylinux_2_{m}_{arch}" for m in range(int(glibc), 4, -1)]
    platforms += [f"manylinux{legacy}_{arch}" for legacy in ("2014", "2010", "1")]
    abi = f"cp{variant.python_minor.replace('.', '')}"
    return [*(f"--platform={p}" for p in platforms), "--python-version", variant.python_minor,
            "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]  # fmt: skip


def python_version_of(image: str) -> str | None:
    """The version of ``python3`` in a local image (None when it has none, e.g. a CUDA base that installs it)."""
    client = docker.from_env()
    try:
        out = client.containers.run(image, ["-c", "import platform; print(platform.python_version())"],
                                    entrypoint="python3", remove=True, network_mode="none")  # fmt: skip
    except (ContainerError, APIError):
        return None
    return out.decode().strip()


def _wheel_digest(path: Path) -> str:
    """A wheel's content: its members' names and bytes (not the zip's timestamps)."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as wheel:
        for name in sorted(wheel.namelist()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(wheel.read(name)).digest())
    return digest.hexdigest()


def content_hash(context: Path, buildargs: dict[str, str]) -> str:
    """What the image is built from: Dockerfile, install script, build arguments, wheels and pins."""
    parts = {
        "files": {
            name: hashlib.sha256((context / name).read_bytes()).hexdigest()
            for name in ("Dockerfile", "install.sh", "wheels/requirements.txt", "sources/requirements.txt")
            if (context / name).exists()
        },
        "args": buildargs,
        "wheels": {w.name: _wheel_digest(w) for w in sorted(context.glob("*/*.whl"))},
        "sources": {
            f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(context.glob("sources/*.tar.gz"))
        },
    }
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:12]


def build(
    role: str,
    *,
    accelerator: str | None = None,
    base: str | None = None,
    wheelhouse: Path | None = None,
    registry: str = "",
    on_log: Callable[[str], None] = print,
) -> list[str]:
    """Build one image (unless its content tag exists) from its variant's lock; its tags, ``<version>`` first.

    ``accelerator`` picks the variant (``cuda`` by default for the vllm and trainer images, whose production bases
    are CUDA images; the orchestrator has one); ``base`` replaces the variant's production base, and must have
    the Python minor version the lock was resolved for."""
    if role not in ROLES:
        raise ImageBuildError(f"no image {role!r} (known: {', '.join(ROLES)})")
    variant = variant_for(role, accelerator or ("cpu" if role in ("orchestrator", "vllm-base") else "cuda"))
    base = base or variant.base
    _check_python(variant, base)
    client = docker.from_env()
    name = f"{registry.rstrip('/') + '/' if registry else ''}rner-{role}"
    extras = f"[{','.join(variant.extras)}]" if variant.extras else ""
    buildargs = {"EXTRAS": extras, "CODE_VERSION": code_version(), "BASE": base}
    with tempfile.TemporaryDirectory(prefix=f"rner-image-{role}-") as tmp:
        context = Path(tmp)
        shutil.copy(IMAGES / role / "Dockerfile", context / "Dockerfile")
        shutil.copy(IMAGES / "install.sh", context / "install.sh")
        on_log(f"{role}: collecting the wheels of {variant.name}")
        collect_wheels(variant, context, wheelhouse)
        tags = [f"{name}:{IMAGE_VERSION}", f"{name}:{IMAGE_VERSION}-{content_hash(context, buildargs)}"]
        try:
            client.images.get(tags[1])
            on_log(f"{role}: {tags[1]} exists, not rebuilt")
        except ImageNotFound:
            on_log(f"{role}: building {tags[1]}")
            _stream_build(client, context, tags[1], buildargs, on_log)
    client.images.get(tags[1]).tag(tags[0])
    return tags


def _check_python(variant: Variant, base: str) -> None:
    """A base whose Python is another minor version than the lock's would get wheels it cannot load. A base
    without python3 (a CUDA base installs it in the Dockerfile) or not on the engine yet is not checked."""
    found = python_version_of(base)
    if found is not None and minor_version(found) != variant.python_minor:
        raise ImageBuildError(
            f"base {base} has Python {found}; the lock {variant.name} is for Python {variant.python_minor}"
        )


def _stream_build(
    client: docker.DockerClient, context: Path, tag: str, buildargs: dict[str, str], on_log: Callable[[str], None]
) -> None:
    # network_mode host: a build on an engine started with --bridge=none has no other network, and the
    # install step needs none anyway.
    stream = client.api.build(
        path=str(context), tag=tag, buildargs=buildargs, network_mode="host", rm=True, forcerm=True, decode=True
    )
    tail: list[str] = []
    for chunk in stream:
        if "error" in chunk:
            raise ImageBuildError(f"docker build of {tag} failed: {chunk['error']}\n" + "".join(tail[-40:]))
        if text := chunk.get("stream"):
            tail.append(text)
            if text.strip():
                on_log(text.rstrip())


def cli_build(
    role: Annotated[list[str] | None, typer.Option(help=f"Image to build (repeatable): {', '.join(ROLES)}.")] = None,
    accelerator: Annotated[
        str | None,
        typer.Option(help="cpu or cuda: the lock (images/locks/) to install; default cuda (vllm, trainer)."),
    ] = None,
    base: Annotated[str | None, typer.Option(help="BASE image (default: the variant's production base).")] = None,
    wheelhouse: Annotated[Path | None, typer.Option(help="Take every wheel from here (no index).")] = None,
    registry: Annotated[str, typer.Option(help="Prefix of the image names, e.g. registry.example.com/ml.")] = "",
) -> None:
    """Build the images (offline inside: wheels are collected here first); prints their tags as JSON."""
    tags = {
        r: build(r, accelerator=accelerator, base=base, wheelhouse=wheelhouse, registry=registry) for r in role or ROLES
    }
    print(json.dumps(tags))


def cli_wheelhouse(
    role: Annotated[str, typer.Option(help=f"The image: {', '.join(ROLES)}.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to fill (project/, wheels/, sources/).")],
    accelerator: Annotated[str, typer.Option(help="cpu or cuda: the lock (images/locks/) to download.")] = "cuda",
) -> None:
    """Download an image's build context wheels (its lock, for its platform) without building: for an engine
    elsewhere (`rner images build --wheelhouse`), or to check that every pinned file exists."""
    chosen = variant_for(role, accelerator)
    check_writable(output, "--output", folder=True)
    collect_wheels(chosen, output)
    sizes = {folder: sum(f.stat().st_size for f in (output / folder).iterdir()) for folder in ("wheels", "sources")}
    print(json.dumps({"output": str(output), "bytes": sizes}))
