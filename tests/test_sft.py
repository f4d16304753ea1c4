"""CT (SFT) for real on a CPU: the embedded SmolLM2-135M learns the two-passage CoT dataset of
``conftest.TrainingData`` (reasoning written for the tests, since the embedded teacher writes almost no
valid CoT records), publishes a model that loads by ``store:<address>``, and resumes from its store
checkpoints exactly where it stopped. Bad input is refused before anything trains.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from schemas import CoTRecord, NERExample, SFTConfig, config_hash
from tasks import sft
from tasks.demo import load_demo
from tasks.models import MODEL_PREFIX, resolve_model
from tasks.prompts import ner_messages, render_prompt
from tasks.settings import Settings
from tasks.store import NotPublished, Published, Store
from tasks.train_stage import (
    OPTIONAL_PACKAGES,
    Device,
    TrainError,
    TrainingRun,
    check_save_steps,
    check_world_size,
    hardware_problems,
    screen,
)

EVERYTHING = frozenset(OPTIONAL_PACKAGES)
H100 = Device(cuda=True, bf16=True, capability=(9, 0), packages=EVERYTHING)


def losses(
    log_history: Callable[..., list[dict[str, Any]]], store: Store, published: Published
) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in log_history(store, published) if "loss" in h]


# --- units: examples, lengths, hardware ------------------------------------------------------------


def test_examples_are_prompt_completion_conversations() -> None:
    ex = load_demo("train")[1]  # has entities
    labeled = ex.model_copy(update={"labels": (*ex.labels, "misc")})
    teacher = {"model": "m", "sampling": {}, "request_key": "k"}
    record = CoTRecord.model_validate(
        {**labeled.model_dump(), "reasoning": "Reasons.", "completion": "c", "teacher": teacher}
    )
    with_cot = sft.sft_example(record, with_cot=True)
    assert with_cot["prompt"] == ner_messages(ex.text, ex.labels)  # the catch-all "misc" is not asked for
    [turn] = with_cot["completion"]
    assert turn["role"] == "assistant" and turn["content"].startswith("<think>\nReasons.\n</think>\n\n{")
    answer = json.loads(turn["content"].split("</think>\n\n")[1])
    assert set(answer["entities"]) == set(ex.labels)
    assert sft.sft_example(record, with_cot=False)["completion"][0]["content"] == json.dumps(answer, ensure_ascii=False)
    assert sft.sft_example(ex, with_cot=False)["completion"][0]["content"].startswith('{"entities"')


def test_screen_counts_too_long_examples_and_applies_the_policy(caplog: pytest.LogCaptureFixture) -> None:
    rows, lengths = ["a", "b", "c"], [100, 300, 200]
    with caplog.at_level(logging.WARNING, logger="rner.train"):
        kept, stats = screen(rows, lengths, 250, "drop", "prompt + target")
    assert kept == ["a", "c"] and (stats["too_long"], stats["trained"], stats["longest"]) == (1, 2, 300)
    assert stats["tokens"] == 300
    assert "1 of 3 examples have prompt + target longer than 250 tokens (longest 300): dropped" in caplog.text
    kept, stats = screen(rows, lengths, 250, "truncate", "prompt + target")
    assert kept == rows and stats["too_long"] == 1  # kept whole: the trainer cuts them to the limit
    assert stats["tokens"] == 100 + 250 + 200
    with pytest.raises(TrainError, match=r"1 of 3 examples have a prompt longer than 250 tokens .*raise the limit"):
        screen(rows, lengths, 250, "fail", "a prompt")
    with pytest.raises(TrainError, match=r"no examples left to train on \(3 of 3 too long\)"):
        screen(rows, lengths, 50, "drop", "prompt + target")


def test_gpu_options_need_the_hardware() -> None:
    paper = SFTConfig.preset("paper")
    assert hardware_problems(paper, H100) == []
    assert hardware_problems(paper, Device(cuda=False, packages=EVERYTHING)) == [
        "liger_kernel: needs a CUDA GPU (this machine has none)",
        "flash_attention: needs a CUDA GPU (this machine has none)",
        "deepspeed_zero: needs a CUDA GPU (this machine has none)",
    ]  # bf16 runs on a CPU (autocast)
    v100 = Device(cuda=True, bf16=False, capability=(7, 0), packages=frozenset({"deepspeed"}))
    assert hardware_problems(paper, v100) == [
        "bf16: needs a GPU with bfloat16 (compute capability 8.0+)",
        "liger_kernel: needs the liger_kernel package (pip install 'reasoning-ner[gpu]')",
        "flash_attention: needs a GPU of compute capability 8.0+ (this one is 7.0) and the flash_attn package "
        "(pip install 'reasoning-ner[gpu]')",
    ]
    with pytest.raises(ValueError, match="flash_attention needs bf16"):
        SFTConfig.preset("paper", bf16=False)


# --- bad input, refused before training -------------------------------------------------------------


@pytest.mark.slow
def test_bad_inputs_are_refused_before_training(
    training_data: Any, sft_smoke: Callable[..., SFTConfig], train_settings: Settings, sft_model: Published
) -> None:
    store = training_data.store
    with pytest.raises(TrainError, match=r"is a 'model' output; sft trains on a 'cot' or 'ner' dataset"):
        sft.run(sft_smoke(dataset=sft_model.manifest.address), store, settings=train_settings)
    with pytest.raises(TrainError, match=r"holds labels without reasoning .*set with_cot: false"):
        sft.run(sft_smoke(dataset=training_data.re.manifest.address), store, settings=train_settings)
    with pytest.raises(NotPublished, match="nothing is published at"):
        sft.run(sft_smoke(dataset="datasets/ner-cot/v9"), store, settings=train_settings)
    with pytest.raises(TrainError, match=r"2 of 2 examples have prompt \+ target longer than 64 tokens"):
        sft.run(sft_smoke(max_seq_len=64, too_long="fail"), store, settings=train_settings)
    if not Device.detect().cuda:  # the paper's options, on a machine without them
        paper = SFTConfig.preset("paper", dataset=training_data.cot.manifest.address)
        with pytest.raises(TrainError, match=r"(?s)cannot run the config as written:\n  - liger_kernel: .*deepspeed"):
            sft.run(paper, store, settings=train_settings)
    with pytest.raises(TrainError, match=r"this run has 1 process\(es\) but `parallel` asks for 2"):
        sft.run(sft_smoke(global_batch_size=2, parallel={"processes_per_node": 2}), store, settings=train_settings)


# --- training ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_learns_and_publishes_a_model(
    sft_model: Published, training_data: Any, log_history: Callable[..., Any]
) -> None:
    store, manifest = training_data.store, sft_model.manifest
    assert (manifest.kind, manifest.stage) == ("model", "sft") and manifest.address.startswith("models/ct/sft/")
    assert manifest.inputs == (training_data.cot.ref,)
    files = {f.path for f in manifest.files_with("model")}
    assert {f"{MODEL_PREFIX}/{name}" for name in ("config.json", "model.safetensors", "tokenizer.json")} <= files
    [curve] = [f for f in manifest.files_with("report") if f.path.endswith(".png")]
    assert store.read_file(manifest.address, curve).startswith(b"\x89PNG")
    stats = manifest.stats
    assert (stats["global_step"], stats["world_size"], stats["resumed_from_step"]) == (4, 1, None)
    assert (stats["base_model"], stats["dataset"]["digest"]) == ("default", training_data.cot.digest)
    assert (stats["examples"], stats["too_long"], stats["trained"]) == (2, 0, 2)
    loss = [value for _, value in losses(log_history, store, sft_model)]
    assert len(loss) == 4
    assert mean(loss[2:]) < 0.7 * mean(loss[:2])  # the second epoch over the same two passages
    assert stats["final"]["train_loss"] == pytest.approx(mean(loss))
    # The lengths screened are the trainer's own tokenization: two epochs saw every token twice.
    assert stats["final"]["num_tokens"] == 2 * stats["tokens"]


@pytest.mark.slow
def test_trained_model_loads_by_store_reference_and_generates(
    sft_model: Published, training_data: Any, tmp_path: Path
) -> None:
    settings = Settings(RNER_STORE=training_data.store.url, RNER_HOME=str(tmp_path))  # type: ignore[call-arg]
    path = resolve_model(f"store:{sft_model.manifest.address}", settings)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    [example] = [ex for ex in store_examples(training_data) if not ex.entities]
    prompt = render_prompt(tokenizer, ner_messages(example.text, example.labels))
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    completion = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert completion.startswith("<think>"), completion  # the trained answer format


def store_examples(training_data: Any) -> list[NERExample]:
    return list(training_data.store.records(training_data.re.manifest))


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(
    training_data: Any,
    sft_smoke: Callable[..., SFTConfig],
    tiny_model: Path,
    train_settings: Settings,
    tmp_path: Path,
    log_history: Callable[..., Any],
    model_weights: Callable[..., dict[str, torch.Tensor]],
) -> None:
    config = sft_smoke(model=str(tiny_model), learning_rate=1e-3, save_steps=2)
    reference = sft.run(config, training_data.store, settings=train_settings)  # uninterrupted

    # The same run in a fresh store, checkpointed every 2 steps and interrupted during step 3.
    store = Store(tmp_path / "store")
    training_data.publish(store)

    def interrupt(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sft.run(config, store, progress=interrupt, settings=train_settings)
    [address] = {p.split("/_checkpoints/")[0] for p in store.list("models/ct/sft")}
    names = {p.removeprefix(f"{address}/") for p in store.list(address)}
    assert "_checkpoints/checkpoint-2.json" in names and "manifest.json" not in names  # stored, not published
    assert json.loads(store.get(f"{address}/_checkpoints/checkpoint-2.json"))["world_size"] == 1

    steps: list[int] = []
    resumed = sft.run(config, store, progress=lambda done, total: steps.append(done), settings=train_settings)
    assert steps == [3, 4] and resumed.manifest.stats["resumed_from_step"] == 2
    assert resumed.manifest.stats["global_step"] == 4
    # Step counter, optimizer and scheduler state, RNG and data position all continued: the losses and the
    # final weights are those of the uninterrupted run (a fresh optimizer at step 3 would change both).
    assert losses(log_history, store, resumed) == losses(log_history, training_data.store, reference)
    ours, theirs = model_weights(store, resumed), model_weights(training_data.store, reference)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def test_a_checkpoint_resumes_only_with_the_world_size_that_wrote_it() -> None:
    where = "s3://b/models/ct/sft/abc/_checkpoints"
    check_world_size({"step": 100, "world_size": 8, "files": []}, 8, where)
    check_world_size({"step": 100, "files": []}, 16, where)  # written before world sizes were recorded
    message = (
        f"cannot resume {where}/checkpoint-100: it was written by 8 process(es) and this run has 16; "
        "run it with 8 (parallel: num_nodes x processes_per_node), or set resume: false to start over"
    )
    with pytest.raises(TrainError) as refused:
        check_world_size({"step": 100, "world_size": 8, "files": []}, 16, where)
    assert str(refused.value) == message


@pytest.mark.slow
def test_resuming_with_another_world_size_is_refused(
    training_data: Any,
    sft_smoke: Callable[..., SFTConfig],
    tiny_model: Path,
    train_settings: Settings,
    tmp_path: Path,
) -> None:
    """``parallel`` is not part of the address: a run on 1 process finds the checkpoint of the same run on 2
    (simulated here by its listing: the refusal comes before any file is fetched) and must not resume it."""
    store = Store(tmp_path / "store")
    training_data.publish(store)
    config = sft_smoke(model=str(tiny_model), save_steps=2)
    wider = config.model_copy(update={"parallel": config.parallel.model_copy(update={"processes_per_node": 2})})
    assert config_hash(wider) == config_hash(config)  # the same output address
    address = TrainingRun.open(
        config, store, stage="sft", kinds=("cot", "ner"), prefix="models/ct", settings=train_settings
    ).out.address
    listing = {"step": 2, "world_size": 2, "files": []}
    store.put(f"{address}/_checkpoints/checkpoint-2.json", json.dumps(listing).encode())
    with pytest.raises(TrainError, match=r"cannot resume .*/checkpoint-2: it was written by 2 process\(es\) and this"):
        sft.run(config, store, settings=train_settings)
    sft.run(config.model_copy(update={"resume": False}), store, settings=train_settings)  # starting over is fine


def test_a_damaged_checkpoint_listing_is_passed_over_for_the_one_before(
    sft_smoke: Callable[..., SFTConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-write (a store without atomic writes) truncates the newest listing: the run resumes from the
    complete checkpoint before it, reports the damage once, and never fails on it."""
    store = Store(tmp_path / "store")
    config = sft_smoke(save_steps=2)
    run = TrainingRun.__new__(TrainingRun)  # only the output is needed: no model, no dataset
    run.out = store.output(f"models/ct/sft/{config_hash(config)[:12]}")
    checkpoints = f"{run.out.address}/_checkpoints"
    assert run.newest_checkpoint() is None
    store.put(f"{checkpoints}/checkpoint-2.json", json.dumps({"step": 2, "world_size": 1, "files": []}).encode())
    store.put(f"{checkpoints}/checkpoint-4.json", b'{"step": 4, "world_si')
    store.put(f"{checkpoints}/checkpoint-6.json", json.dumps({"step": 4, "files": []}).encode())  # misnamed
    with caplog.at_level("WARNING"):
        assert run.newest_checkpoint() == {"step": 2, "world_size": 1, "files": []}
        assert run.newest_checkpoint()["step"] == 2  # type: ignore[index]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # once per damaged listing, not once per look
    assert "checkpoint-4.json: damaged checkpoint listing (invalid JSON" in warnings[0] + warnings[1]


def test_save_steps_beyond_the_run_are_warned_about() -> None:
    assert check_save_steps(40, 196) is None
    assert check_save_steps(196, 196) is None
    assert check_save_steps(None, 4) is None
    warning = check_save_steps(500, 196)
    assert warning is not None and "save_steps 500 is more than this run's 196 optimizer steps" in warning


@pytest.mark.slow
def test_a_run_that_would_never_checkpoint_is_warned_about_when_training_starts(
    training_data: Any, sft_smoke: Callable[..., SFTConfig], tiny_model: Path, train_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    config = sft_smoke(model=str(tiny_model), save_steps=5)  # four steps
    with caplog.at_level(logging.WARNING, logger="rner.train"):
        published = sft.run(config, training_data.store, settings=train_settings)
    assert published.manifest.kind == "model"
    assert "save_steps 5 is more than this run's 4 optimizer steps" in caplog.text


# --- GPU: the paper's options on a real GPU -----------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
def test_sft_with_the_papers_gpu_options(
    training_data: Any, sft_smoke: Callable[..., SFTConfig], default_model: Path, launcher: Any, tmp_path: Path
) -> None:
    options = {"bf16": True, "liger_kernel": True, "flash_attention": True, "deepspeed_zero": 3}
    config = sft_smoke(model=str(default_model), max_steps=2, gradient_checkpointing=True, **options)
    process = launcher.start("sft", config, training_data.store, tmp_path)
    final = launcher.published(process, training_data.store).manifest.stats["final"]
    assert final["step"] == 2
    print("GPU SFT, the paper's options: tokens/s", final["num_tokens"] / final["train_runtime"])
