"""Two knots kept untied: job backends depend on ``flows.jobs`` and never the reverse, and a stage gets its store
as an argument (``store:`` model references resolve there), not through the process environment."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from schemas import MixConfig, SFTConfig, TransformersRunner
from tasks.evaluate import model_identity
from tasks.stage_cli import run_stage
from tasks.store import NotPublished, Published, Store

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_jobs_knows_no_backend_and_the_backends_know_jobs() -> None:
    backends = {"flows.docker_jobs", "flows.kubernetes_jobs"}
    assert not imported_modules(ROOT / "flows/jobs.py") & backends
    for backend in backends:
        assert "flows.jobs" in imported_modules(ROOT / f"{backend.replace('.', '/')}.py")


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``RNER_STORE`` names a store other than the stage's; models are cached under a fresh ``RNER_HOME``."""
    monkeypatch.setenv("RNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RNER_STORE", str(tmp_path / "elsewhere"))
    return tmp_path / "elsewhere"


def test_a_stage_resolves_store_models_in_the_store_it_is_given(tmp_path: Path, elsewhere: Path) -> None:
    store = Store(tmp_path / "store")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = store.output("models/ct/sft/tiny")
    out.publish(
        kind="model", stage="sft", config=SFTConfig.preset("smoke"), files=out.put_tree(model, "model", "model")
    )
    runner = TransformersRunner(model="store:models/ct/sft/tiny")
    assert model_identity(runner, store.settings).startswith("sha256:")
    with pytest.raises(NotPublished, match="elsewhere"):  # the environment's store has no such model
        model_identity(runner)


def test_the_stage_command_passes_its_store_without_touching_the_environment(tmp_path: Path, elsewhere: Path) -> None:
    seen: list[str] = []
    store = Store(tmp_path / "store")
    out = store.output("datasets/mixed")
    published = out.publish(kind="cot", stage="mix", config=MixConfig.preset("smoke"), files=[])

    def run(config: MixConfig, target: Store, **_: object) -> Published:
        seen.append(target.settings.store or "")
        return published

    run_stage(MixConfig, run, config_json='{"sources": ["demo:cot"]}', store=str(tmp_path / "store"))
    assert seen == [store.url]
    assert os.environ["RNER_STORE"] == str(elsewhere)
