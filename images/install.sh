#!/bin/sh
# Installs into a virtualenv (RNER_PREFIX, default /opt/rner), offline, in steps that every image runs as
# separate layers (a new commit changes only the last; the engine reuses the others):
#   install.sh dependencies     the pins in /tmp/wheels/requirements.txt (the image's lock, images/locks/),
#                               from the wheels beside them; then RNER_HOME (/var/lib/rner) is made writable
#                               for any uid the job runs as
#   install.sh sources          the source distributions in /tmp/sources (sources/requirements.txt), compiled
#                               against the torch the dependencies installed (no build isolation): flash-attn and
#                               DeepSpeed on CUDA images; nothing on CPU images
#   install.sh project EXTRAS   the project's wheel from /tmp/project with EXTRAS (e.g. "[train]"): with no
#                               index, every dependency it declares must be installed already, or this fails
# uv (a dependency of the project, so its wheel is in the wheelhouse) installs: pip takes minutes for the
# trainer's torch stack, uv seconds. Bytecode is compiled here, once, not by every container that starts.
set -eu
PREFIX="${RNER_PREFIX:-/opt/rner}"
install() {
  "$PREFIX/bin/uv" pip install --no-cache --compile-bytecode --python "$PREFIX/bin/python" --no-index "$@"
}
case "$1" in
dependencies)
  python3 -m venv "$PREFIX"
  "$PREFIX/bin/pip" install --no-cache-dir --no-index --find-links /tmp/wheels uv
  install --no-deps --find-links /tmp/wheels -r /tmp/wheels/requirements.txt
  rm -rf /tmp/wheels
  mkdir -p /var/lib/rner
  chmod 1777 /var/lib/rner
  ;;
sources)
  if [ -s /tmp/sources/requirements.txt ]; then
    # flash-attn: never try to download a prebuilt wheel (no network here), compile for the architectures
    # asked (FLASH_ATTN_CUDA_ARCHS), MAX_JOBS parallel nvcc jobs (each needs several GB of memory).
    # DeepSpeed: no ops compiled now; they are compiled just in time, on first use, with the base's nvcc.
    FLASH_ATTENTION_FORCE_BUILD=TRUE DS_BUILD_OPS=0 install --no-build-isolation --no-deps \
      --find-links /tmp/sources -r /tmp/sources/requirements.txt
  fi
  rm -rf /tmp/sources
  ;;
project)
  install --find-links /tmp/project "reasoning-ner$2"
  rm -rf /tmp/project
  ;;
*)
  echo "usage: install.sh dependencies | install.sh sources | install.sh project EXTRAS" >&2
  exit 2
  ;;
esac
