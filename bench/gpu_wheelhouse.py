"""The wheels the GPU machine lacks, collected here (with the package registry) for ``bench/gpu_smoke.py`` there.

    python bench/gpu_wheelhouse.py .gpu-wheels                   # for the GPU image's Python (3.12)
    python bench/gpu_wheelhouse.py /tmp/wh --python-version 3.11   # for this machine's, to try the install here

The GPU machine has no internet and no registry; its image has torch 2.11 (CUDA 13), transformers 5.17,
accelerate 1.15, peft, triton, pandas, pyarrow, matplotlib and most small libraries, but not TRL, Liger, DeepSpeed,
datasets or pydantic (the device docs' package list of 2026-11). Wheels travel with the working tree (carried
ignored paths, at most 64 MiB per run together with the tree). ``CARRIED`` lists what goes, each with why:

- the GPU stack the smoke measures: ``trl``, ``liger-kernel`` and ``deepspeed`` (+ ``hjson``, its config reader).
  DeepSpeed is on PyPI as a source distribution only; built here with ``DS_BUILD_OPS=0`` it is a pure-Python
  ``py3-none-any`` wheel with no op compiled in (``installed_ops`` all False): the ops it uses are JIT-compiled
  with the machine's nvcc and ninja when first loaded, and plain ZeRO-3 with the trainer's torch AdamW loads none;
- what TRL and the project's training stages import that the image lacks: ``datasets`` (+ ``dill``,
  ``multiprocess``), ``pydantic`` (+ ``pydantic-core``, ``annotated-types``, ``typing-inspection``, and
  ``typing-extensions``, which pydantic 2.14 needs at 4.16 or newer), ``pydantic-settings`` (+ ``python-dotenv``)
  and ``obstore`` (``tasks.store``).

Versions are the project's pins (pyproject.toml) where it pins them, else the versions installed in the environment
this runs in (the ones the CPU tests use), else ``EXTRA_PINS``. Everything is fetched with ``--no-deps``: the
requirements TRL 1.16 declares (transformers >= 4.56.2, accelerate >= 1.10.1, datasets >= 4.7) are met by the
image and the carried wheels, but nothing checks that there; an image with older transformers or accelerate than
TRL wants would fail at import or at run time, not at install. Binary wheels (``pydantic-core``, ``obstore``) are
downloaded for ``--python-version`` on manylinux x86-64; ``multiprocess`` has one pure wheel per Python version.

The folder ends up holding exactly those wheels (others are removed), and the total is checked against the
64 MiB a run may carry, counting the working tree that travels with it (``git ls-files -co --exclude-standard``).
The folder must be ignored by git to be carried (``/.gpu-wheels/`` in ``.gitignore``).

``install`` (called by ``gpu_smoke.py --wheelhouse DIR`` on the GPU machine) puts the wheels that fit the running
Python into a plain folder with ``pip install --no-index --no-deps --target``, skipping every distribution the
image already has at the carried version or newer; the caller puts the folder first on ``sys.path`` and
``PYTHONPATH``. The image's own packages stay as they are (no venv, nothing written outside the folder).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LIMIT_MIB = 64
"""What one run on the GPU machine may carry: the working tree and the carried paths together."""
GPU_PYTHON = "3.12"
"""python3 of the GPU machine's image (3.12.3 in the device docs of 2026-11)."""

CARRIED = {
    "trl": "SFTTrainer and GRPOTrainer",
    "liger-kernel": "Liger's Triton kernels (SFT, ZeRO-3)",
    "deepspeed": "ZeRO-3 (built here from the sdist with DS_BUILD_OPS=0: ops JIT-compiled there)",
    "hjson": "DeepSpeed's config reader",
    "datasets": "TRL's datasets",
    "dill": "datasets",
    "multiprocess": "datasets",
    "pydantic": "the project's configs and records; DeepSpeed's config",
    "pydantic-core": "pydantic",
    "annotated-types": "pydantic",
    "typing-inspection": "pydantic",
    "typing-extensions": "pydantic 2.14 needs >= 4.16 (installed there only if the image's is older)",
    "pydantic-settings": "tasks.settings",
    "python-dotenv": "pydantic-settings",
    "obstore": "tasks.store",
}
"""Distribution → why the GPU machine needs it."""
EXTRA_PINS = {"hjson": "3.1.0", "liger-kernel": "0.8.5", "deepspeed": "0.19.8"}
"""Versions of what neither pyproject.toml pins nor this environment has installed."""
BUILT_HERE = frozenset({"deepspeed"})
"""Distributions PyPI has as source only: built into a wheel here."""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_pins(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """``name == version`` pins of pyproject.toml's dependencies and extras, by normalised name."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    pins = {}
    for spec in specs:
        if match := re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;,]+)\s*", spec):
            pins[_normal(match.group(1))] = match.group(2)
    return pins


def versions(names: list[str]) -> dict[str, str]:
    """The version of each distribution to carry (see the module docstring for the order of sources)."""
    pins = project_pins()
    chosen = {}
    for name in names:
        version = pins.get(_normal(name))
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = EXTRA_PINS.get(name)
        if version is None:
            raise SystemExit(f"no version for {name}: pin it in EXTRA_PINS")
        chosen[name] = version
    return chosen


def platform_options(python_version: str) -> list[str]:
    """pip's options for wheels that load in a CPython ``python_version`` on glibc x86-64 (pip matches each
    ``--platform`` exactly, so the common manylinux tags are all named)."""
    minor = python_version.replace(".", "")
    platforms = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17, 12, 5)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return [*(f"--platform={p}" for p in platforms), "--python-version", python_version, "--implementation", "cp",
            "--abi", f"cp{minor}", "--abi", "abi3", "--abi", "none", "--only-binary", ":all:"]  # fmt: skip


def _pip(args: list[str], env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def build_deepspeed(version: str, dest: Path) -> Path:
    """DeepSpeed ``version`` as a pure-Python wheel in ``dest``: built from the sdist with no op compiled in
    (``DS_BUILD_OPS=0``), against this environment's torch (no build isolation: its setup.py imports torch)."""
    existing = list(dest.glob(f"deepspeed-{version}-py3-none-any.whl"))
    if existing:
        return existing[0]
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "DS_BUILD_OPS": "0"}
        _pip(["wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", scratch, f"deepspeed=={version}"], env)
        [wheel] = Path(scratch).glob("deepspeed-*.whl")
        if not wheel.name.endswith("-py3-none-any.whl"):
            raise SystemExit(f"DeepSpeed built into {wheel.name}, not a pure-Python wheel")
        return Path(shutil.move(str(wheel), dest / wheel.name))


def tree_bytes() -> int:
    """Bytes of the working tree that travels to the GPU machine: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=True).stdout  # fmt: skip
    paths = (REPO / p for p in listed.decode().split("\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file())


def collect(dest: Path, python_version: str = GPU_PYTHON) -> list[Path]:
    """Every wheel of ``CARRIED`` in ``dest`` (downloaded, or built for DeepSpeed), and nothing else."""
    dest.mkdir(parents=True, exist_ok=True)
    pinned = versions(list(CARRIED))
    downloads = [f"{name}=={version}" for name, version in pinned.items() if name not in BUILT_HERE]
    _pip(["download", "--quiet", "--no-deps", *platform_options(python_version), "-d", str(dest), *downloads])
    wheels = [build_deepspeed(pinned[name], dest) for name in BUILT_HERE]
    wanted = {(_normal(name), version) for name, version in pinned.items()}
    for wheel in sorted(dest.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        if (_normal(name), version) in wanted:
            wheels.append(wheel)
        else:
            print(f"removed {wheel.name} (not in CARRIED at this version)")
            wheel.unlink()
    for stray in dest.iterdir():
        if stray.suffix != ".whl":
            print(f"note: {stray} is not a wheel and travels too")
    return sorted(set(wheels))


# --- on the GPU machine --------------------------------------------------------------------------------------


def install(wheelhouse: Path, site: Path) -> dict[str, Any]:
    """Install into ``site`` (``pip --target``) the wheels of ``wheelhouse`` that the running Python can load,
    except distributions it has already at the carried version or newer; what was installed, kept, and left out.
    The caller puts ``site`` first on ``sys.path`` and ``PYTHONPATH``."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version

    rank = {tag: i for i, tag in enumerate(sys_tags())}
    best: dict[str, tuple[int, Path, Version]] = {}
    unusable = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        fits = [rank[t] for t in tags if t in rank]
        if not fits:
            unusable.append(wheel.name)
        elif name not in best or min(fits) < best[name][0]:
            best[name] = (min(fits), wheel, version)
    others = [p for p in sys.path if p and Path(p).resolve() != site.resolve()]
    chosen, kept = [], []
    for name, (_, wheel, version) in sorted(best.items()):
        have = next(importlib.metadata.distributions(name=name, path=others), None)
        if have is not None and Version(have.version) >= version:
            kept.append(f"{name} {have.version}")
        else:
            chosen.append(wheel)
    unusable = [w for w in unusable if parse_wheel_filename(w)[0] not in best]
    if chosen:
        site.mkdir(parents=True, exist_ok=True)
        _pip(["install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
              "--target", str(site), *map(str, chosen)])  # fmt: skip
    return {
        "site": str(site),
        "installed": [w.name for w in chosen],
        "kept_from_image": kept,
        "no_wheel_for_this_python": unusable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="the wheelhouse folder (e.g. .gpu-wheels, ignored by git)")
    parser.add_argument("--python-version", default=GPU_PYTHON, help="Python of the machine that installs them")
    args = parser.parse_args()
    wheels = collect(args.dest, args.python_version)
    total = 0
    for wheel in wheels:
        size = wheel.stat().st_size
        total += size
        print(f"{size / 2**20:8.2f} MiB  {wheel.name}")
    tree = tree_bytes()
    dest = args.dest.resolve()
    inside = dest.is_relative_to(REPO)
    ignored = inside and subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(dest)]).returncode == 0
    carried = tree if inside and not ignored else total + tree  # a folder git does not ignore is in the tree
    print(f"wheels: {len(wheels)} files, {total / 2**20:.2f} MiB; working tree {tree / 2**20:.2f} MiB; "
          f"one run carries {carried / 2**20:.2f} of {LIMIT_MIB} MiB")  # fmt: skip
    if not ignored:
        where = "is not ignored by git" if inside else "is outside the repository"
        print(f"note: {args.dest} {where}: a run carries an ignored folder of the repository (/.gpu-wheels/)")
    if carried > LIMIT_MIB * 2**20:
        raise SystemExit(f"over the {LIMIT_MIB} MiB a run may carry")


if __name__ == "__main__":
    main()
