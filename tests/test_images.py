"""The image tag's content hash: what an image is built from decides whether it is built again."""

from __future__ import annotations

import zipfile
from pathlib import Path

from flows.images import content_hash


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
