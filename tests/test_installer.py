"""tasks/installer.py: uv installs follow pip's configuration (wheel dirs, constraints, indexes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tasks.installer import pip_config, uv_options

REPO = Path(__file__).resolve().parents[1]
PROBE = "rner_installer_probe"


def _wheel(folder: Path, version: str) -> None:
    """A minimal pure-Python wheel whose module reports its version."""
    info = f"{PROBE}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{PROBE}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{PROBE}.py", f"VERSION = {version!r}\n")
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


@pytest.fixture
def pip_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pip.conf naming a wheel folder with versions 0.1 and 0.2 and a constraint that allows only 0.1."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in ("0.1", "0.2"):
        _wheel(wheels, version)
    (tmp_path / "constraints.txt").write_text(f"{PROBE}<0.2\n")
    conf = tmp_path / "pip.conf"
    conf.write_text(
        f"[global]\nno-index = true\nfind-links = {wheels}\nconstraint = {tmp_path / 'constraints.txt'}\n"
        "extra-index-url =\n    file:///srv/a/simple\n    file:///srv/b/simple\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    return conf


def test_pip_config_reads_files_and_lists(pip_conf: Path, tmp_path: Path) -> None:
    settings = pip_config()
    assert str(tmp_path / "wheels") in settings["find-links"]
    assert {"file:///srv/a/simple", "file:///srv/b/simple"} <= set(settings["extra-index-url"])
    assert str(tmp_path / "constraints.txt") in settings["constraint"]


def test_uv_options_map_every_setting() -> None:
    args, env = uv_options(
        {
            "index-url": ["https://mirror/simple"],
            "extra-index-url": ["file:///a", "file:///b"],
            "find-links": ["/opt/wheels"],
            "constraint": ["/etc/c.txt"],
            "no-index": ["true"],
            "cert": ["/etc/ca.pem"],
            "timeout": ["60"],
        }
    )
    assert " ".join(args) == (
        "--index-strategy unsafe-best-match --index-url https://mirror/simple --extra-index-url file:///a "
        "--extra-index-url file:///b --find-links /opt/wheels --constraint /etc/c.txt --no-index"
    )
    assert env == {"SSL_CERT_FILE": "/etc/ca.pem"}


def test_install_honours_find_links_and_constraints(pip_conf: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # As the Makefile runs it: a script, before the project is importable in that environment.
    done = subprocess.run(
        [sys.executable, str(REPO / "tasks" / "installer.py"), "--python", python, PROBE],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr
    version = subprocess.run([python, "-c", f"import {PROBE}; print({PROBE}.VERSION)"], capture_output=True, text=True)
    assert version.stdout.strip() == "0.1"
    # Compiled at install: with PYTHONDONTWRITEBYTECODE (CI) no process would write it later.
    assert list((venv / "lib").glob(f"python3*/site-packages/__pycache__/{PROBE}.cpython-*.pyc"))


def test_install_failure_is_reported(pip_conf: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "tasks" / "installer.py"), "--python", sys.executable, f"{PROBE}==0.2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "rner-installer-probe<0.2" in done.stderr  # the constraint from pip.conf is why


def test_makefile_installs_the_pinned_uv() -> None:
    pinned = [d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"] if "uv==" in d]
    makefile = re.search(r"^UV_PIN := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert makefile and pinned == [makefile.group(1)]
