"""Rolling an evaluated model out to the extraction service (``flows.serve_rollout``): the gate and the target.

Usage::

    RolloutConfig(evaluation="evals/evaluate/abc", min_f1=0.6)        # the model that evaluation evaluated
    RolloutConfig(evaluation="evals/evaluate/abc", model="store:models/re/grpo/def", not_worse=False)

The gate reads the evaluation's manifest (``stats[metric]``, F1 in [0, 1], as ``rner eval`` publishes it); the
target is the Deployment ``rner k8s render-service`` rendered, in the Kubernetes backend's namespace.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat

from schemas.base import Config, Name
from schemas.manifest import RelPath

Metric = Literal["average_f1", "average_f1_strict", "micro_f1"]


class RolloutConfig(Config):
    """Serve a model once its evaluation passes the gate: on the service's Kubernetes Deployment, pod by pod."""

    evaluation: RelPath
    """The evaluation to gate on: the address ``rner eval`` published (``evals/...``) in the store."""
    model: str | None = None
    """The model to serve (``store:models/...``, ``s3://``, a path in the image); ``None``: the model the evaluation
    evaluated. Given, it must be that model: the gate never passes a model on another model's numbers."""
    metric: Metric = "average_f1"
    """The evaluation's number the gate reads: paper-mode F1 averaged over datasets, the same in strict mode, or
    paper-mode micro F1 over every example."""
    min_f1: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """Serve only a model whose ``metric`` is at least this (F1 in [0, 1]); ``None``: no floor."""
    not_worse: bool = True
    """Serve only a model whose ``metric`` is not below the served model's, by the evaluation the last rollout
    recorded on the Deployment; both evaluations must be on the same eval sets (else the gate refuses). A Deployment
    never rolled by this flow (rendered and applied) records none, and only ``min_f1`` applies."""
    deployment: Name = "rner-serve"
    """The Deployment's name (``rner k8s render-service``'s ``name``) in the backend's namespace."""
    timeout_s: PositiveFloat = 3600.0
    """How long the new pods may take to be ready (a vLLM server loads for minutes); past it, or when the
    Deployment reports its progress deadline exceeded, the rollout is undone and the old pods keep serving."""
