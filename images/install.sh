#!/bin/sh
# Installs the project into its own virtualenv /opt/rner, offline, in two steps that every image runs as two
# layers (a new commit changes only the second; the engine reuses the first):
#   install.sh dependencies     the pins in /tmp/wheels/requirements.txt, from the wheels beside them;
#                               then RNER_HOME (/var/lib/rner) is made writable for any uid the job runs as
#   install.sh project EXTRAS   the project's wheel from /tmp/project with EXTRAS (e.g. "[train]"): with no
#                               index, every dependency it declares must be installed already, or this fails
# uv (a dependency of the project, so its wheel is in the wheelhouse) installs: pip takes minutes for the
# trainer's torch stack, uv seconds. Bytecode is compiled here, once, not by every container that starts.
set -eu
install() {
  /opt/rner/bin/uv pip install --no-cache --compile-bytecode --python /opt/rner/bin/python --no-index "$@"
}
case "$1" in
dependencies)
  python3 -m venv /opt/rner
  /opt/rner/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels uv
  install --no-deps --find-links /tmp/wheels -r /tmp/wheels/requirements.txt
  rm -rf /tmp/wheels
  mkdir -p /var/lib/rner
  chmod 1777 /var/lib/rner
  ;;
project)
  install --find-links /tmp/project "reasoning-ner$2"
  rm -rf /tmp/project
  ;;
*)
  echo "usage: install.sh dependencies | install.sh project EXTRAS" >&2
  exit 2
  ;;
esac
