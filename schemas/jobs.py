"""Where a stage runs: the job backend a flow uses to run a stage's command line.

Every backend runs the same command, ``python -m tasks.<stage> --config-json ... --store ...``; only the
place differs. ``local`` is a subprocess on the orchestrator's machine, in the project's environment
(stages start their vLLM servers from the managed vLLM environment themselves).

Usage (a flow parameter)::

    backend: JobBackend = LocalJob()
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from schemas.base import Config


class LocalJob(Config):
    """A subprocess of the flow's process."""

    kind: Literal["local"] = "local"
    python: str | None = None
    """Interpreter with the project installed (default: the flow's own)."""


JobBackend = Annotated[LocalJob, Field(discriminator="kind")]
