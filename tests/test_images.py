"""The image tag's content hash: what an image is built from decides whether it is built again."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from flows.images import IMAGES, content_hash
from flows.locks import variant_for

INSTALL_STEP = r"sh /tmp/install\.sh (\w+)"


def _context(root: Path, *, stamp: tuple[int, ...], code: bytes = b"x = 1\n") -> Path:
    for folder in ("wheels", "project"):
        (root / folder).mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "install.sh").write_text("true\n")
    (root / "wheels" / "requirements.txt").write_text("uv==0.13.9\n")
    with zipfile.ZipFile(root / "project" / "reasoning_ner-0.1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(zipfile.ZipInfo("tasks/x.py", date_time=stamp), code)
    return root


def test_the_hash_ignores_wheel_timestamps_and_follows_files_and_arguments(tmp_path: Path) -> None:
    args = {"EXTRAS": "", "CODE_VERSION": "0.1.0+gaaaa"}
    first = content_hash(_context(tmp_path / "a", stamp=(2026, 1, 1, 0, 0, 0)), args)
    assert content_hash(_context(tmp_path / "b", stamp=(2026, 6, 1, 12, 0, 0)), args) == first
    assert content_hash(_context(tmp_path / "c", stamp=(2026, 1, 1, 0, 0, 0), code=b"x = 2\n"), args) != first
    assert content_hash(tmp_path / "a", {**args, "EXTRAS": "[train]"}) != first
    (tmp_path / "b" / "wheels" / "requirements.txt").write_text("uv==0.13.8\n")
    assert content_hash(tmp_path / "b", args) != first


def test_another_commit_is_another_image_even_with_the_same_files(tmp_path: Path) -> None:
    # A reused image would write the older commit into every manifest made in its containers.
    context = _context(tmp_path, stamp=(2026, 1, 1, 0, 0, 0))
    hashes = {content_hash(context, {"CODE_VERSION": code}) for code in ("0.1.0+gaaaa", "0.1.0+gbbbb")}
    assert len(hashes) == 2


def _dockerfile(role: str) -> str:
    return (IMAGES / role / "Dockerfile").read_text()


@pytest.mark.parametrize("role", ["vllm", "trainer", "orchestrator"])
def test_each_dockerfile_defaults_to_the_base_its_production_lock_was_resolved_for(role: str) -> None:
    [default] = re.findall(r"^ARG BASE=(\S+)$", _dockerfile(role), re.MULTILINE)
    assert default == variant_for(role, "cpu" if role == "orchestrator" else "cuda").base


@pytest.mark.parametrize("role", ["vllm", "trainer", "orchestrator", "vllm-base"])
def test_every_dockerfile_copies_only_what_the_build_context_holds(role: str) -> None:
    copied = {line.split()[1] for line in _dockerfile(role).splitlines() if line.startswith("COPY ")}
    assert copied <= {"install.sh", "wheels", "sources", "project"}, copied


def test_the_source_builds_come_after_torch_and_before_the_project() -> None:
    steps = re.findall(INSTALL_STEP, _dockerfile("trainer"))
    assert steps == ["dependencies", "sources", "project"]


def test_the_vllm_image_fixes_the_bases_python_before_its_own_goes_first_on_path() -> None:
    # RNER_VLLM_PYTHON=python3 resolved, at run time, to /opt/rner/bin/python3: the project's env, without vLLM.
    text = _dockerfile("vllm")
    [python] = re.findall(r"RNER_VLLM_PYTHON=(\S+)", text)
    assert python.startswith("/") and not python.startswith("/opt/rner")
    assert text.index(f"> {python}") < text.index("ENV PATH=/opt/rner/bin")
