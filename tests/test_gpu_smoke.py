"""The GPU smoke benchmark (bench/gpu_smoke.py) and its wheelhouse (bench/gpu_wheelhouse.py), on a CPU: the MFU
arithmetic, the carried versions against the project's pins, the install step on hand-made wheels, and the whole
script with ``--device cpu`` (SFT and GRPO through the project's stages; ZeRO-3 skipped, with the reason).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    """A bench script as a module (bench/ is no package of the project)."""
    spec = importlib.util.spec_from_file_location(f"bench.{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


smoke = _load("gpu_smoke")
wheelhouse = _load("gpu_wheelhouse")


# --- arithmetic ----------------------------------------------------------------------------------------------


def test_peak_flops_come_from_the_device_name() -> None:
    assert smoke.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0  # SXM
    assert smoke.peak_tflops("NVIDIA H200") == 989.0
    assert smoke.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert smoke.peak_tflops("NVIDIA H100 NVL") == 835.0
    assert smoke.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert smoke.peak_tflops("NVIDIA GeForce RTX 4090") is None  # unknown: MFU is null
    assert smoke.peak_tflops(None) is None


def test_mfu_is_model_flops_over_the_peak() -> None:
    # The GPU size: 474,021,888 parameters, 33,554,432 of them the (tied) embedding.
    total, embedding = 474_021_888, 33_554_432
    assert smoke.flop_parameters(total, embedding, tied=True) == total  # counted once, as the LM head
    assert smoke.flop_parameters(total + embedding, embedding, tied=False) == total  # the lookup is no matmul
    dense, with_attention = smoke.train_flops_per_token(total, 28, 2048, 1350.0)
    assert dense == 6 * total
    assert with_attention == dense + 12 * 28 * 2048 * 1350.0
    # 100k tokens/s of a 474M model on an H100: 6 x 474e6 x 1e5 = 284 TFLOP/s of 989.
    assert smoke.mfu(100_000, dense, 989.0) == pytest.approx(6 * total * 1e5 / 989e12)
    assert smoke.mfu(100_000, dense, 989.0) == pytest.approx(0.2876, abs=1e-4)
    assert smoke.mfu(100_000, dense, None) is None and smoke.mfu(None, dense, 989.0) is None


def test_steady_state_leaves_the_warmup_steps_out() -> None:
    ends = {1: 10.0, 2: 11.0, 3: 12.5, 4: 13.5}
    tokens = {1: 100.0, 2: 250.0, 3: 400.0, 4: 500.0}
    assert smoke.steady(ends, tokens, warmup=1) == (400.0, 3.5, 3)  # steps 2-4
    assert smoke.steady(ends, tokens, warmup=2) == (250.0, 2.5, 2)
    assert smoke.steady(ends, tokens, warmup=9) == (100.0, 1.0, 1)  # a shorter run: its last step
    assert smoke.steady({1: 10.0}, {1: 100.0}, warmup=1) is None  # one step: the trainer's own figures


# --- the wheelhouse ------------------------------------------------------------------------------------------


def test_carried_versions_are_the_projects_pins() -> None:
    pinned = wheelhouse.versions(list(wheelhouse.CARRIED))
    assert pinned["trl"] == "1.16.0" and pinned["liger-kernel"] == "0.8.5" and pinned["deepspeed"] == "0.19.8"
    project = wheelhouse.project_pins()
    for name in ("trl", "datasets", "pydantic", "pydantic-settings", "obstore", "deepspeed", "liger-kernel"):
        assert pinned[name] == project[name]


def _wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any") -> Path:
    """A minimal wheel of one module ``name`` (a distribution of the same name)."""
    path = folder / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{member},,\n" for member in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


def test_install_adds_only_what_the_python_lacks(tmp_path: Path) -> None:
    house, site = tmp_path / "wheels", tmp_path / "site"
    house.mkdir()
    _wheel(house, "rner_smoke_probe", "1.0")  # missing here: installed
    _wheel(house, "packaging", "0.1")  # installed here at a newer version: kept
    _wheel(house, "rner_smoke_other", "1.0", tag="cp27-cp27mu-manylinux1_x86_64")  # another Python's
    report = wheelhouse.install(house, site)
    assert report["installed"] == ["rner_smoke_probe-1.0-py3-none-any.whl"]
    assert [entry.split()[0] for entry in report["kept_from_image"]] == ["packaging"]
    assert report["no_wheel_for_this_python"] == ["rner_smoke_other-1.0-cp27-cp27mu-manylinux1_x86_64.whl"]
    assert (site / "rner_smoke_probe" / "__init__.py").read_text() == "VERSION = '1.0'\n"
    assert not (site / "packaging").exists()


# --- the whole script on a CPU -------------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_run_reports_each_part(tmp_path: Path) -> None:
    out = tmp_path / "out" / "gpu_smoke.json"
    command = [sys.executable, str(REPO / "bench" / "gpu_smoke.py"), "--device", "cpu", "--out", str(out)]
    start = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [line["part"] for line in lines] == ["sft", "zero3", "grpo"]  # one JSON line per part, in order
    summary = json.loads(out.read_text())
    assert summary["parts"] == {line["part"]: line for line in lines}
    assert (out.parent / "gpu_smoke.log").stat().st_size > 0  # the workers' output
    assert summary["device"]["kind"] == "cpu" and summary["device"]["peak_tflops"] is None
    assert summary["model"]["parameters"] == summary["model"]["flop_parameters"] > 0  # tied embeddings

    sft, zero3, grpo = (summary["parts"][part] for part in ("sft", "zero3", "grpo"))
    assert sft["status"] == "ok" and sft["tokens_per_s"] > 0 and sft["steps"] == 2
    assert sft["mfu"] is None and sft["mfu_with_attention"] is None  # no peak on a CPU
    assert sft["config"] == {"bf16": False, "liger_kernel": False, "gradient_checkpointing": True,
                             "deepspeed_zero": 0, "packing": False, "max_seq_len": 2048, "sequences_per_step": 2,
                             "attention": "sdpa"}  # fmt: skip
    assert sft["output"].startswith("models/ct/sft/")
    assert grpo["status"] == "ok" and grpo["tokens_per_s"] > 0 and grpo["generation_tokens_per_s"] > 0
    assert grpo["generate_calls"] and grpo["mfu"] is None and grpo["generation_mfu"] is None
    assert grpo["output"].startswith("models/re/grpo/")
    assert zero3["status"] == "skipped" and zero3["reason"]
    if importlib.util.find_spec("deepspeed") is None:
        assert zero3["reason"] == "deepspeed not importable"
    else:  # the stage runs DeepSpeed on CUDA GPUs only
        assert "deepspeed_zero: needs a CUDA GPU" in zero3["reason"]
    assert summary["seconds"] <= seconds
