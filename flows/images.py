"""Build the images of images/ offline, from a wheelhouse, tagged by project version and content.

    rner images build                                   # vllm, trainer, orchestrator on their production bases
    rner images build --role vllm --base rner-base:bookworm   # a CPU variant on a local base image (tests)
    rner images build --role trainer --extras "[train,gpu,vllm]" --wheelhouse /mnt/wheels

A build needs no network inside: the project is built into a wheel (the build context's ``project/``),
every dependency is collected into ``wheels/`` on this machine (or taken from ``--wheelhouse``), resolved for
the Python of the base image where it has one (else this machine's), and ``images/install.sh`` installs them
with ``--no-index`` into ``/opt/rner`` in the image: the dependencies in one layer, the project in the next,
so that an engine which built one commit's image rebuilds only the project's layer for the next. Wheels are
downloaded for this machine's platform and Python minor version; images whose Python minor version differs
take a ``--wheelhouse`` built for them.

Each image is tagged ``<name>:<version>`` and ``<name>:<version>-<content>``, where content hashes the
Dockerfile, the install script, the build arguments (the code version among them: an image names the
commit it was built from, so another commit is another image, even where the files are the same), the pins and
every wheel (the project's by its files, since a wheel's zip timestamps change with every build): the same inputs
give the same tag, and an image whose tag exists already is not built again.

Usage::

    tags = build("vllm", base="rner-base:bookworm")     # ['rner-vllm:0.1.0', 'rner-vllm:0.1.0-3f2a…']
"""

from __future__ import annotations

import hashlib
import json
import platform
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

from schemas import canonical_json
from schemas.jobs import IMAGE_VERSION
from tasks.errors import RnerError
from tasks.installer import uv_pip
from tasks.store import code_version

IMAGES = Path(__file__).resolve().parent.parent / "images"
REPO = IMAGES.parent
EXTRAS = {"vllm": "", "trainer": "[train]", "orchestrator": "[orchestrate]"}
"""What each image installs by default (the CPU-buildable set; GPU trainers add ``gpu`` and ``vllm``)."""


class ImageBuildError(RnerError):
    """An image could not be built; the message carries the step and the end of its output."""


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise ImageBuildError(f"{what} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def _run(command: list[str], what: str) -> None:
    _check(subprocess.run(command, capture_output=True, text=True), what)


def collect_wheels(
    extras: str, context: Path, wheelhouse: Path | None = None, python_version: str | None = None
) -> None:
    """The build context's wheels: ``project/`` the project's wheel, ``wheels/`` every dependency (with
    ``extras``) and ``wheels/requirements.txt`` their pins. Two folders, because they are two image layers:
    a new commit changes the project's wheel only, and the dependencies' layer is reused.

    The pins are resolved for the image's Python (``python_version``; default this one's): environment markers
    differ between patch releases (redis needs async-timeout below Python 3.11.3 only), so what pip would pick
    here can miss what the image's interpreter requires. uv resolves for that version, then pip downloads
    exactly those pins."""
    project_dir, wheels = context / "project", context / "wheels"
    project_dir.mkdir(parents=True, exist_ok=True)
    wheels.mkdir(parents=True, exist_ok=True)
    # One build of the checkout at a time: setuptools writes build/ and *.egg-info inside it, and two image
    # builds at once (the test fixtures build the trainer and orchestrator images in parallel) break each other.
    with FileLock(Path(tempfile.gettempdir()) / "rner-project-wheel.lock", timeout=1800):
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(project_dir), str(REPO)],
             "pip wheel")  # fmt: skip
    [project] = project_dir.glob("reasoning_ner-*.whl")
    index = ["--no-index", "--find-links", str(wheelhouse)] if wheelhouse is not None else []
    version = python_version or platform.python_version()
    wanted = context / "requirements.in"
    wanted.write_text(f"reasoning-ner{extras} @ {project.as_uri()}\n")
    pins = wheels / "requirements.txt"
    compiled = uv_pip("compile", [*index, "--python-version", version, "--no-header", "--no-annotate",
                                  "-o", str(pins), str(wanted)], sys.executable)  # fmt: skip
    _check(compiled, f"resolving the dependencies for Python {version}")
    wanted.unlink()
    pins.write_text("".join(line for line in pins.read_text().splitlines(True) if "reasoning-ner" not in line))
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *index, "-d", str(wheels), "-r", str(pins)],
         "pip download")  # fmt: skip


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
            for name in ("Dockerfile", "install.sh", "wheels/requirements.txt")
        },
        "args": buildargs,
        "wheels": {w.name: _wheel_digest(w) for w in sorted(context.glob("*/*.whl"))},
    }
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:12]


def build(
    role: str,
    *,
    base: str | None = None,
    extras: str | None = None,
    wheelhouse: Path | None = None,
    registry: str = "",
    on_log: Callable[[str], None] = print,
) -> list[str]:
    """Build one image (unless its content tag exists); its tags, ``<version>`` first."""
    if role not in EXTRAS:
        raise ImageBuildError(f"no image {role!r} (known: {', '.join(EXTRAS)})")
    client = docker.from_env()
    name = f"{registry.rstrip('/') + '/' if registry else ''}rner-{role}"
    buildargs = {"EXTRAS": EXTRAS[role] if extras is None else extras, "CODE_VERSION": code_version()}
    if base is not None:
        buildargs["BASE"] = base
    with tempfile.TemporaryDirectory(prefix=f"rner-image-{role}-") as tmp:
        context = Path(tmp)
        shutil.copy(IMAGES / role / "Dockerfile", context / "Dockerfile")
        shutil.copy(IMAGES / "install.sh", context / "install.sh")
        on_log(f"{role}: collecting wheels{buildargs['EXTRAS'] and ' ' + buildargs['EXTRAS']}")
        collect_wheels(buildargs["EXTRAS"], context, wheelhouse, base and python_version_of(base))
        tags = [f"{name}:{IMAGE_VERSION}", f"{name}:{IMAGE_VERSION}-{content_hash(context, buildargs)}"]
        try:
            client.images.get(tags[1])
            on_log(f"{role}: {tags[1]} exists, not rebuilt")
        except ImageNotFound:
            on_log(f"{role}: building {tags[1]}")
            _stream_build(client, context, tags[1], buildargs, on_log)
    client.images.get(tags[1]).tag(tags[0])
    return tags


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
    role: Annotated[list[str] | None, typer.Option(help=f"Image to build (repeatable): {', '.join(EXTRAS)}.")] = None,
    base: Annotated[str | None, typer.Option(help="BASE image (default: each Dockerfile's production base).")] = None,
    extras: Annotated[str | None, typer.Option(help='Project extras to install, e.g. "[train,gpu,vllm]".')] = None,
    wheelhouse: Annotated[Path | None, typer.Option(help="Take every wheel from here (no index).")] = None,
    registry: Annotated[str, typer.Option(help="Prefix of the image names, e.g. registry.example.com/ml.")] = "",
) -> None:
    """Build the images (offline inside: wheels are collected here first); prints their tags as JSON."""
    tags = {r: build(r, base=base, extras=extras, wheelhouse=wheelhouse, registry=registry) for r in role or EXTRAS}
    print(json.dumps(tags))
