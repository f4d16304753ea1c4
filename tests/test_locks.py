"""Locked environments (flows/locks.py): every image variant resolves for its own platform and Python to the lock
committed in images/locks/, the locks agree with pyproject.toml, a conflict fails, and the CUDA trainer's
wheelhouse step gets its source distributions without building them. These resolve against the package
registry (the only network here), as `rner images lock` does."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from flows.images import target_options
from flows.locks import PYPROJECT, VARIANTS, LockError, Variant, download_sources, pins, stale, variant, variant_for


@pytest.mark.parametrize("v", VARIANTS, ids=lambda v: v.name)
def test_every_variant_resolves_for_its_platform_to_its_committed_lock(v: Variant) -> None:
    assert v.path.exists(), f"run `rner images lock --variant {v.name}`"
    assert stale(v) == "", f"{v.path.name} is stale: run `rner images lock`"


def _project_pins(extras: tuple[str, ...]) -> dict[str, str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    return pins("\n".join(wanted))


@pytest.mark.parametrize("v", [v for v in VARIANTS if v.extras is not None], ids=lambda v: v.name)
def test_the_locks_pin_what_pyproject_pins(v: Variant) -> None:
    locked = pins(v.path.read_text())
    for name, version in _project_pins(v.extras or ()).items():
        assert locked.get(name, "").split("+")[0] == version, f"{v.name}: {name}=={version} vs {locked.get(name)}"


def test_torch_is_the_build_of_the_variants_accelerator() -> None:
    for v in VARIANTS:
        torch = pins(v.path.read_text()).get("torch")
        if torch is None:
            continue
        assert torch.endswith("+cpu") == (v.accelerator == "cpu"), (v.name, torch)
        nvidia = [name for name in pins(v.path.read_text()) if name.startswith("nvidia-")]
        assert bool(nvidia) == (v.accelerator == "cuda"), (v.name, nvidia)


def test_the_cuda_trainer_has_the_papers_stack_for_python_312() -> None:
    v = variant_for("trainer", "cuda")
    locked = pins(v.path.read_text())
    assert {"vllm", "trl", "deepspeed", "flash-attn", "liger-kernel", "ninja"} <= set(locked)
    assert locked["torch"] == "2.13.0" and locked["vllm"] == "0.31.0" and locked["trl"] == "1.16.0"
    assert v.python.startswith("3.12") and v.source_built == ("flash-attn", "deepspeed")
    assert "13.0" in v.base  # torch 2.13.0's CUDA major (nvidia-cuda-runtime 13.x in the lock)
    assert locked["nvidia-cuda-runtime"].startswith("13.")


def test_a_conflicting_set_fails_naming_the_variant_and_the_package(tmp_path: Path) -> None:
    # The defect this lock exists for: vllm 0.31 bounds transformers below 5.18.
    v = Variant("conflict", "trainer", ("vllm",), "3.12", "x86_64-manylinux_2_35", "x", "cuda",
                requirements=("transformers==5.19.0",))  # fmt: skip
    with pytest.raises(LockError, match=r"conflict does not resolve .*\n(.|\n)*transformers"):
        from flows.locks import resolve

        resolve(v, tmp_path / "out.txt")


def test_unknown_variants_are_refused_with_the_known_ones() -> None:
    with pytest.raises(LockError, match="known: orchestrator"):
        variant("trainer-rocm")
    with pytest.raises(LockError, match="no rocm variant of the trainer image"):
        variant_for("trainer", "rocm")


def test_wheels_are_selected_for_the_images_platform_and_python_not_this_machines() -> None:
    options = target_options(variant_for("trainer", "cuda"))
    platforms = [o.split("=", 1)[1] for o in options if o.startswith("--platform=")]
    # glibc 2.39 loads every older manylinux tag: pip does not widen the tag by itself.
    assert platforms[0] == "manylinux_2_39_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert "manylinux2014_x86_64" in platforms
    assert options[options.index("--python-version") + 1] == "3.12"
    assert "cp312" in options and "abi3" in options and "none" in options


def test_the_source_built_packages_download_as_sdists_without_a_build(tmp_path: Path) -> None:
    v = variant_for("trainer", "cuda")
    wanted = download_sources(v, v.path.read_text(), tmp_path)
    assert wanted == [f"{p}=={pins(v.path.read_text())[p]}" for p in v.source_built]
    files = sorted(f.name for f in tmp_path.iterdir())
    assert [re.sub(r"-[\d.]+(post\d+)?\.tar\.gz$", "", f) for f in files] == ["deepspeed", "flash_attn"]
    assert not list(tmp_path.glob("*.whl"))  # nothing was built
