"""The memory plan (``tasks.memory_plan``): its arithmetic against numbers worked out by hand for a small model, the
estimators it shares with DeepSpeed and accelerate, the published sizes of the paper's models counted from their
configs alone, the paper presets on 8 x 80 GB, the configs it refuses (naming the field to change), the servers it
plans, and the training stage that refuses a config before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoConfig
from typer.testing import CliRunner

from schemas import GRPOConfig, JudgeConfig, PipelineConfig, SFTConfig, VLLMLaunch
from schemas.configs import PAPER_TEACHER, PAPER_TEACHER_URL
from tasks import memory_plan as mp
from tasks.memory_plan import GIB, GPUS, ModelShape, PlanError, check_memory, plan_config, plan_training, server_part
from tasks.settings import Settings

H100 = GPUS["h100-80gb"]
EIGHTY_GB = [GPUS[name] for name in ("h100-80gb", "a800-80gb", "a100-80gb")]

TINY = {
    "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000,
    "tie_word_embeddings": False,
}  # fmt: skip
"""A Qwen3 small enough to count by hand (h 64, f 128, L 2, 4 heads and 2 KV heads of 16, vocab 1000)."""
TINY_PARAMS = (
    1000 * 64  # embeddings
    + 2
    * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 16 + 16 + 3 * 64 * 128 + 64 + 64)  # q, k, v, o, q/k norms, MLP, norms
    + 64  # final norm
    + 1000 * 64  # LM head (not tied)
)
"""202,112."""


def tiny() -> ModelShape:
    return mp.shape_of(AutoConfig.for_model(**TINY), name="tiny", source="test")


def sft(**overrides: Any) -> SFTConfig:
    values = {"dataset": "d", "per_device_batch_size": 2, "global_batch_size": 8, "max_seq_len": 128}
    values |= {"bf16": True, "gradient_checkpointing": True, "parallel": {"processes_per_node": 4}}
    return SFTConfig.model_validate({**values, **overrides})


def counted(items: list[mp.Item]) -> dict[str, float]:
    return {i.what: i.bytes for i in items if i.counted}


# --- model shape --------------------------------------------------------------------------------------------


def test_a_small_model_is_counted_as_by_hand() -> None:
    shape = tiny()
    assert TINY_PARAMS == 202_112
    assert (shape.params, shape.largest_layer_params) == (TINY_PARAMS, 64_000)  # the embedding (= LM head)
    assert (shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.head_dim) == (64, 2, 4, 2, 16)
    assert shape.kv_elements_per_token == 2 * 2 * 2 * 16  # K and V, 2 layers, 2 KV heads of 16
    tied = mp.shape_of(AutoConfig.for_model(**{**TINY, "tie_word_embeddings": True}), name="t", source="test")
    assert tied.params == TINY_PARAMS - 64_000  # a tied LM head is the embedding, counted once


@pytest.mark.parametrize(
    ("model", "params", "published"),
    [
        ("Qwen/Qwen3-8B-Base", 8_190_735_360, "8.2B"),
        ("Qwen/Qwen3-1.7B-Base", 1_720_574_976, "1.7B, 1.4B without embeddings (tied to the LM head)"),
        ("Qwen/Qwen3-32B", 32_762_123_264, "32.8B"),
        ("deepseek-ai/DeepSeek-R1", 671_026_404_352, "671B, without the multi-token-prediction layer"),
    ],
)
def test_the_paper_models_are_counted_offline_from_their_configs(model: str, params: int, published: str) -> None:
    """The model cards' parameter counts, from the config alone (no network, no weights)."""
    shape = mp.model_shape(model)
    assert shape.params == params, published
    assert mp.model_shape(model.lower()).params == params  # hub ids are case-insensitive


def test_deepseek_r1_keeps_its_fp8_weights_in_one_byte() -> None:
    r1 = mp.model_shape("deepseek-ai/DeepSeek-R1")
    assert r1.quantized_params / r1.params > 0.99 and r1.quant_block == 128 * 128
    # ~690 GB of checkpoint (688.6 GB on the hub, the MTP layer included); vLLM loads the 61 layers: 673 GB.
    assert 600 < r1.weight_bytes(2) / GIB < 650
    assert r1.kv_elements_per_token == 61 * (512 + 64)  # the latent cache of multi-head latent attention


def test_model_configs_come_from_local_directories_and_the_store(tmp_path: Path) -> None:
    from tasks.store import Store

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(TINY))
    assert mp.model_shape(str(tmp_path / "m")).params == TINY_PARAMS
    store = Store(tmp_path / "store")
    store.put("models/ct/sft/abc/model/config.json", json.dumps(TINY).encode())
    assert mp.model_shape("store:models/ct/sft/abc", store=store).params == TINY_PARAMS
    with pytest.raises(PlanError, match=r"cannot read its config\.json"):
        mp.model_shape("store:models/ct/sft/none", store=store)
    with pytest.raises(PlanError, match=r"has no config\.json"):
        mp.model_shape(str(tmp_path))


# --- the arithmetic -----------------------------------------------------------------------------------------


def test_model_states_under_each_zero_stage_by_hand() -> None:
    p, n, largest = TINY_PARAMS, 4, 64_000
    expected = {
        0: {"weights": 2 * p, "gradients": 2 * p, "optimizer states": 4 * p},  # bf16 model, torch AdamW in bf16
        1: {"weights": 2 * p + 4 * p / n, "gradients": 2 * p + 4 * p / n, "optimizer states": 8 * p / n},
        2: {"weights": 2 * p + 4 * p / n, "gradients": 6 * p / n, "optimizer states": 8 * p / n},
        3: {"weights": 4 * p / n + 2 * largest, "gradients": 6 * p / n + 2 * largest, "optimizer states": 8 * p / n},
    }
    for stage, rows in expected.items():
        config = sft().model_copy(update={"deepspeed_zero": stage})
        assert counted(mp.model_state_items(config, tiny())) == pytest.approx(rows), stage
    # DeepSpeed's own totals: 2P + 18P/N (ZeRO-2), 18P/N + 4 x largest layer (ZeRO-3).
    assert sum(expected[2].values()) == mp.zero2_transcribed(p, 4, 1) == 2 * p + 18 * p // 4
    assert sum(expected[3].values()) == mp.zero3_transcribed(p, largest, 4, 1) == 18 * p // 4 + 4 * largest
    fp32 = counted(mp.model_state_items(sft(bf16=False, deepspeed_zero=0), tiny()))
    assert fp32 == {"weights": 4 * p, "gradients": 4 * p, "optimizer states": 8 * p}


DEEPSPEED_RUNTIME = ("deepspeed", "hjson", "ninja", "py-cpuinfo", "msgpack", "einops", "nvidia-ml-py")
"""DeepSpeed and what importing it needs beyond this environment, at the CUDA trainer's locked versions."""
GRID = [
    (params, largest, per_node, nodes)
    for params, largest in [(TINY_PARAMS, 64_000), (8_190_735_360, 622_329_856), (32_762_123_264, 777_912_320)]
    for per_node, nodes in [(1, 1), (6, 1), (8, 1), (8, 2), (7, 3)]
]
DEEPSPEED_ESTIMATES = """
import json, sys
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as zero3
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as zero2
print(json.dumps([[zero3(p, big, n, m, cpu_offload=False, cpu_offload_params=False)[1],
                   zero2(p, n, m, cpu_offload=False)[1]] for p, big, n, m in json.loads(sys.argv[1])]))
"""


@pytest.fixture(scope="module")
def deepspeed_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepSpeed as the CUDA trainer image installs it (its sdist built with ``DS_BUILD_OPS=0``: pure Python), in a
    folder of its own: this environment must not see it (it is a GPU package; hardware checks look for it)."""
    from flows.locks import download_sources, pins, variant_for

    trainer = variant_for("trainer", "cuda")
    locked = trainer.path.read_text()
    work = tmp_path_factory.mktemp("deepspeed")
    site, sources, wheels = work / "site", work / "sources", work / "wheels"
    download_sources(replace(trainer, source_built=("deepspeed",)), locked, sources)
    pip = [sys.executable, "-m", "pip", "--quiet"]
    env = {**os.environ, "DS_BUILD_OPS": "0"}
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels),
                    *map(str, sources.glob("deepspeed-*"))], check=True, env=env)  # fmt: skip
    runtime = [f"{name}=={pins(locked)[name]}" for name in DEEPSPEED_RUNTIME[1:]]
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), "--find-links", str(wheels),
                    f"deepspeed=={pins(locked)['deepspeed']}", *runtime], check=True)  # fmt: skip
    return site


@pytest.mark.slow
def test_the_transcribed_zero_estimators_are_deepspeeds(deepspeed_site: Path) -> None:
    """Where DeepSpeed imports (the GPU images), the plan calls it; elsewhere its formulas, which must agree: here
    DeepSpeed's own estimators run in a process that has it, over a grid of models and worlds."""
    env = {**os.environ, "PYTHONPATH": str(deepspeed_site)}
    out = subprocess.run([sys.executable, "-c", DEEPSPEED_ESTIMATES, json.dumps(GRID)], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    theirs = json.loads(out.strip().splitlines()[-1])
    ours = [[mp.zero3_transcribed(p, big, n, m), mp.zero2_transcribed(p, n, m)] for p, big, n, m in GRID]
    assert ours == theirs


def test_zero_0_in_float32_is_accelerates_training_estimate() -> None:
    from accelerate.commands.estimate import estimate_training_usage

    usage = estimate_training_usage(4 * TINY_PARAMS, "float32")
    rows = counted(mp.model_state_items(sft(bf16=False, deepspeed_zero=0), tiny()))
    assert (rows["weights"], rows["gradients"], rows["optimizer states"]) == (
        usage["model"],
        usage["gradients"],
        usage["optimizer"],
    )


def test_activations_by_hand() -> None:
    shape, t = tiny(), 2 * 128  # 2 sequences of 128 tokens
    h, q, kv, f = 64, 64, 32, 128
    per_token = (2 * h + 4 * q + 4 * kv) + (2 * h + 8 * f) + 2 * 6 * h  # attention, gated MLP, two RMSNorms
    assert per_token == 2432
    assert mp.layer_activation_bytes(shape, t, fused_norms=False) == per_token * t
    assert mp.layer_activation_bytes(shape, t, fused_norms=True) == (per_token - 2 * 4 * h) * t  # Liger's norms
    items = {i.what: i for i in mp.activation_items(sft(), shape)}
    with_ckpt, without = items["activations, gradient checkpointing"], items["activations, no checkpointing"]
    assert with_ckpt.bytes == 2 * t * h * 2 + per_token * t  # every layer's input + one layer recomputed
    assert without.bytes == 2 * per_token * t
    assert with_ckpt.counted and not without.counted
    assert not mp.activation_items(sft(gradient_checkpointing=False), shape)[1].counted  # the other way round
    fp32 = {i.what: i.bytes for i in mp.activation_items(sft(bf16=False), shape)}
    assert fp32["activations, no checkpointing"] == 2 * without.bytes


def test_korthikantis_gpt_block_is_the_same_accounting() -> None:
    """With q = kv = h, fused norms and an ungated MLP of 4h (2h + 4f instead of 2h + 8f), the per-layer bytes are
    Korthikanti et al.'s 34·s·b·h less their two dropout masks (these models have no dropout): 32·s·b·h."""
    gpt = ModelShape("gpt", "test", "gpt2", 0, 0, hidden=64, layers=1, heads=4, kv_heads=4, head_dim=16,
                     intermediate=256, vocab=0, kv_elements_per_token=0)  # fmt: skip
    gated = mp.layer_activation_bytes(gpt, 1, fused_norms=True)
    ungated = gated - 8 * gpt.intermediate + 4 * gpt.intermediate
    assert ungated == 32 * gpt.hidden


def test_a_whole_training_plan_by_hand() -> None:
    p, t = TINY_PARAMS, 256
    config = sft(deepspeed_zero=3)
    items = counted(mp.training_items(config, tiny(), H100))
    by_hand = {
        "weights": p + 2 * 64_000,
        "gradients": 6 * p / 4 + 2 * 64_000,
        "optimizer states": 2 * p,
        "activations, gradient checkpointing": 2 * t * 64 * 2 + 2432 * t,
        "CUDA context, NCCL, cuBLAS": 2 * GIB,
    }
    assert items == pytest.approx(by_hand)
    [part] = plan_training(config, tiny(), H100)
    assert part.fits and part.total_gib == pytest.approx(sum(by_hand.values()) / GIB)


def test_grpo_adds_the_reference_model_and_what_its_rollouts_need() -> None:
    grpo = {"dataset": "d", "bf16": True, "global_batch_size": 16, "per_device_batch_size": 4, "num_generations": 4}
    grpo |= {"max_prompt_length": 64, "max_completion_length": 64, "parallel": {"processes_per_node": 2}}
    config = GRPOConfig.model_validate({**grpo, "deepspeed_zero": 3, "beta": 0.04})
    items = counted(mp.training_items(config, tiny(), H100))
    assert items["reference model"] == 2 * TINY_PARAMS / 2
    kv = tiny().kv_elements_per_token * 2  # bytes per token
    assert items["generation KV cache (transformers)"] == kv * 128 * 4 * 2  # 4 x 2 accumulation sequences of 128
    assert "reference model" not in counted(mp.training_items(config.model_copy(update={"beta": 0.0}), tiny(), H100))
    colocate = config.model_copy(update={"rollout": "colocate"})
    assert (
        counted(mp.training_items(colocate, tiny(), H100))["vLLM in the process (colocate)"]
        == 0.3 * H100.memory_gib * GIB
    )
    server = GRPOConfig.model_validate({**grpo, "rollout": "server", "rollout_gpus": 2})
    train, rollout = plan_training(server, tiny(), H100)
    assert not any(i.what.startswith("generation") or "colocate" in i.what for i in train.items)
    assert rollout.gpus == 2 and "rollout server" in rollout.title


# --- the paper's configurations -----------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", EIGHTY_GB, ids=lambda g: g.name)
@pytest.mark.parametrize("preset", ["paper", "paper-1.7b"])
def test_the_paper_presets_fit_8_gpus_of_80_gb(preset: str, gpu: mp.GPU) -> None:
    parts, elsewhere = plan_config(PipelineConfig.preset(preset), gpu)
    assert [p.title.split(":")[0] for p in parts] == ["judge", "sft", "grpo", "grpo", "evaluate"]
    assert all(p.fits for p in parts), [p.summary for p in parts if not p.fits]
    [teacher] = elsewhere
    assert (
        teacher
        == f"annotate: teacher: an endpoint ({PAPER_TEACHER_URL}, {PAPER_TEACHER}): served elsewhere, not planned here"
    )
    sft_part, grpo_part, rollout = parts[1], parts[2], parts[3]
    assert (sft_part.gpus, grpo_part.gpus, rollout.gpus) == (8, 6, 2)


def test_the_paper_sft_preset_fits_as_padding_free_micro_batches() -> None:
    """16 x 8192 tokens padded would not fit 80 GB (the released run trained padding-free on A800s): the plan says how
    long its examples may be on average instead."""
    [part] = plan_training(SFTConfig.preset("paper"), mp.model_shape("Qwen/Qwen3-8B-Base"), H100)
    assert part.fits and "fits padding-free micro-batches of up to" in part.summary
    budget = mp.token_budget(SFTConfig.preset("paper"), mp.model_shape("Qwen/Qwen3-8B-Base"), H100)
    assert 8192 < budget < 16 * 8192 and part.total_gib <= part.limit_gib + 1e-6
    padded = SFTConfig.preset("paper", padding_free=False)
    [part] = plan_training(padded, mp.model_shape("Qwen/Qwen3-8B-Base"), H100)
    assert not part.fits and part.summary.startswith("per_device_batch_size 16 needs ~76 GiB per GPU on h100-80gb")


def test_the_old_grpo_per_device_16_at_8b_does_not_fit_and_says_what_to_change() -> None:
    config = GRPOConfig.preset("paper", per_device_batch_size=16)
    [train, rollout] = plan_training(config, mp.model_shape("Qwen/Qwen3-8B-Base"), H100)
    assert rollout.fits and not train.fits
    assert train.summary.startswith("per_device_batch_size 16 needs ~74 GiB per GPU on h100-80gb (80 GiB, of which")
    assert "lower per_device_batch_size to 8 (~52 GiB)" in train.summary  # 384 = 8 x 6 processes x 8 accumulation
    [ok, _] = plan_training(GRPOConfig.preset("paper"), mp.model_shape("Qwen/Qwen3-8B-Base"), H100)
    assert ok.fits and 35 < ok.total_gib < 45  # the released per-device 4
    # On 141 GB it fits; on 40 GB not even the released 4 does.
    assert plan_training(config, mp.model_shape("Qwen/Qwen3-8B-Base"), GPUS["h200-141gb"])[0].fits
    assert not plan_training(GRPOConfig.preset("paper"), mp.model_shape("Qwen/Qwen3-8B-Base"), GPUS["a100-40gb"])[
        0
    ].fits


def test_without_gradient_checkpointing_the_advice_names_it() -> None:
    config = sft(gradient_checkpointing=False, max_seq_len=8192, per_device_batch_size=4, global_batch_size=16)
    [part] = plan_training(config, mp.model_shape("Qwen/Qwen3-1.7B-Base"), H100)
    assert not part.fits and part.summary.startswith("per_device_batch_size 4 needs ~95 GiB per GPU on h100-80gb")
    assert "set gradient_checkpointing: true (~21 GiB); or lower per_device_batch_size to 2 (~55 GiB)" in part.summary


# --- servers ------------------------------------------------------------------------------------------------


def test_kv_cache_per_token() -> None:
    assert mp.kv_bytes_per_token(mp.model_shape("Qwen/Qwen3-8B-Base")) == 2 * 36 * 8 * 128 * 2  # 144 KiB
    assert mp.kv_bytes_per_token(mp.model_shape("Qwen/Qwen3-32B")) == 2 * 64 * 8 * 128 * 2  # 256 KiB
    assert mp.kv_bytes_per_token(mp.model_shape("deepseek-ai/DeepSeek-R1")) == 61 * 576 * 2


def test_the_judge_fits_4_gpus_and_r1_does_not_fit_one_node() -> None:
    [judge], _ = plan_config(JudgeConfig.preset("paper"), H100)
    assert judge.fits and judge.gpus == 4
    weights = next(i for i in judge.items if i.what == "weights")
    assert weights.bytes == pytest.approx(32_762_123_264 * 2 / 4)
    r1 = VLLMLaunch(model="deepseek-ai/DeepSeek-R1", tensor_parallel_size=8, max_model_len=40960)
    part = mp.plan_server("annotate: teacher", r1, H100)
    assert part is not None and not part.fits
    assert part.summary.startswith("tensor_parallel_size 8: deepseek-ai/DeepSeek-R1 needs 78 GiB of weights per GPU")
    assert "rner k8s render-server" in part.summary
    shape = mp.model_shape("deepseek-ai/DeepSeek-R1")
    two_nodes = server_part("r1", shape, H100, tensor_parallel=8, pipeline_parallel=2, max_model_len=40960)
    assert two_nodes.fits and two_nodes.gpus == 16
    assert not server_part("r1", shape, GPUS["h200-141gb"], tensor_parallel=4, max_model_len=40960).fits
    assert server_part("r1", shape, GPUS["h200-141gb"], tensor_parallel=8, max_model_len=40960).fits  # 8 x 141 GB


def test_a_server_whose_sequences_do_not_fit_names_max_model_len() -> None:
    shape = mp.model_shape("Qwen/Qwen3-8B-Base")
    part = server_part("eval", shape, GPUS["l40s-48gb"], tensor_parallel=1, max_model_len=200_000)
    assert not part.fits and part.summary.startswith("max_model_len 200000: one full-length sequence needs")
    # Grouped-query KV heads split over tensor parallelism; a latent cache (MLA) does not.
    assert "/ 8 (KV split" in server_part("x", shape, H100, tensor_parallel=8, max_model_len=4096).items[2].formula


# --- the stages' check --------------------------------------------------------------------------------------


def settings(tmp_path: Path, **values: str) -> Settings:
    return Settings(RNER_HOME=str(tmp_path / "home"), **values)  # type: ignore[arg-type]


def config_only_model(tmp_path: Path, name: str = "Qwen/Qwen3-8B-Base") -> Path:
    """A model's config.json and nothing else: loading it as a model (or its tokenizer) would fail."""
    model = tmp_path / f"{name.split('/')[1]}-config-only"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(mp.KNOWN_CONFIGS[name]))
    return model


def test_check_memory_refuses_warns_or_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = str(config_only_model(tmp_path))
    big = GRPOConfig.preset("paper", per_device_batch_size=16, model=model)
    with pytest.raises(PlanError, match=r"does not fit its GPUs: per_device_batch_size 16 needs ~74 GiB per GPU"):
        check_memory(big, model, settings(tmp_path, RNER_GPU="h100-80gb"))
    assert check_memory(big, model, settings(tmp_path, RNER_GPU="h200-141gb"))[0].fits
    with caplog.at_level("WARNING", logger="rner.plan"):
        parts = check_memory(big, model, settings(tmp_path, RNER_GPU="h100-80gb", RNER_MEMORY_CHECK="warn"))
    assert not parts[0].fits and "RNER_MEMORY_CHECK=warn: training anyway" in caplog.text
    assert check_memory(big, model, settings(tmp_path, RNER_GPU="h100-80gb", RNER_MEMORY_CHECK="off")) == []
    if not mp.gpu_in_use(settings(tmp_path)):  # a CPU machine without RNER_GPU: nothing to plan for
        assert check_memory(big, model, settings(tmp_path)) == []
    with caplog.at_level("WARNING", logger="rner.plan"):  # no config at hand: logged, never a refusal
        assert check_memory(big, str(tmp_path / "nowhere"), settings(tmp_path, RNER_GPU="h100-80gb")) == []
    with pytest.raises(PlanError, match="unknown GPU 'h100'"):
        check_memory(big, model, settings(tmp_path, RNER_GPU="h100"))


def test_a_training_stage_refuses_before_loading_the_model(tmp_path: Path, training_data: Any) -> None:
    """On a CPU machine told it trains on a 40 GB A100: the plan runs first and refuses; the model directory holds a
    config alone, so reaching the model (or its tokenizer) would have failed differently."""
    from tasks import sft

    model = config_only_model(tmp_path, "Qwen/Qwen3-1.7B-Base")
    config = SFTConfig(
        dataset=training_data.cot.manifest.address, model=str(model), per_device_batch_size=16, global_batch_size=16,
        max_seq_len=8192, bf16=True, gradient_checkpointing=True, save_steps=None,
    )  # fmt: skip
    refused = r"per_device_batch_size 16 needs ~\d+ GiB per GPU on a100-40gb .*lower per_device_batch_size to 8"
    with pytest.raises(PlanError, match=refused):
        sft.run(config, training_data.store, settings=settings(tmp_path, RNER_GPU="a100-40gb"))
    assert not (tmp_path / "home" / "runs").exists()  # no work directory either: nothing started


# --- the command --------------------------------------------------------------------------------------------


def test_rner_train_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.cli import app

    monkeypatch.delenv("RNER_GPU", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "plan", "grpo", "--preset", "paper", "--gpu", "h100-80gb", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["fits"] and [p["gpus"] for p in plan["parts"]] == [6, 2]
    items = {i["what"]: i for i in plan["parts"][0]["items"]}
    without = items["activations, no checkpointing"]
    assert without["counted"] is False and "Korthikanti" in without["formula"]
    config = tmp_path / "grpo.yaml"
    config.write_text("preset: paper\nper_device_batch_size: 16\n")
    result = runner.invoke(app, ["train", "plan", "grpo", "--config", str(config), "--gpu", "a800-80gb"])
    assert result.exit_code == 1
    assert "per_device_batch_size 16 needs ~74 GiB per GPU on a800-80gb" in " ".join(result.output.split())
    result = runner.invoke(app, ["train", "plan", "cg", "--preset", "paper", "--gpu", "h100-80gb"])
    assert result.exit_code == 0 and "annotate: teacher: an endpoint" in result.output
    result = runner.invoke(app, ["train", "plan", "grpo", "--preset", "paper", "--gpu", "tpu"])
    assert result.exit_code == 1 and "unknown GPU 'tpu'" in str(result.exception)
