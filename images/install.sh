#!/bin/sh
# Installs the project, with the extras in $1 (e.g. "[train]"), from the wheelhouse at /tmp/wheels into its own
# virtualenv /opt/rner, offline; then makes RNER_HOME writable for any uid the job runs as. Every image runs it.
# uv (a dependency of the project, so its wheel is in the wheelhouse) installs it: pip takes minutes for the
# trainer's torch stack, uv seconds. Bytecode is compiled here, once, not by every container that starts.
set -eu
python3 -m venv /opt/rner
/opt/rner/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels uv
/opt/rner/bin/uv pip install --no-cache --compile-bytecode --python /opt/rner/bin/python \
  --no-index --find-links /tmp/wheels "reasoning-ner$1"
rm -rf /tmp/wheels
mkdir -p /var/lib/rner
chmod 1777 /var/lib/rner
