"""Rolling a model out to the extraction service, as pure decisions: is the model good enough to serve (the
gate), what the service serves after (its ``ServeConfig`` with the new model), and how far a rollout has got
from the Deployment's status. ``flows.serve_rollout`` talks to the cluster and acts on them.

Usage::

    new = evaluated(store.load("evals/evaluate/abc"), "average_f1")
    refusal = gate(config, new, served_model="store:models/re/old", served=None)   # None: serve it
    progress(generation=3, observed=3, replicas=2, updated=2, available=2, total=2, conditions=[])  # done

The gate passes a model only on its own evaluation (the model evaluated is the model served), at least
``min_f1``, and, with ``not_worse``, at least the served model's score on the same eval sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.rollout import Metric, RolloutConfig
from schemas.service import ServeConfig
from tasks.errors import RnerError
from tasks.store import Published


class RolloutError(RnerError, ValueError):
    """An evaluation or a Deployment the rollout cannot work with, or a rollout that failed and was undone."""


@dataclass(frozen=True)
class Evaluated:
    """What the gate needs of one evaluation."""

    address: str
    model: str
    """The model reference the evaluation generated with (its config's ``model.model``)."""
    score: float
    sets: frozenset[str]
    """The eval sets' manifest digests: two scores compare only on the same sets."""


def evaluated(published: Published, metric: Metric) -> Evaluated:
    """The evaluation ``published`` as the gate reads it; anything but an ``evaluate`` output raises."""
    manifest = published.manifest
    if manifest.stage != "evaluate":
        raise RolloutError(f"{manifest.address}: a {manifest.stage} output, not an evaluation (`rner eval`)")
    score, model = manifest.stats.get(metric), manifest.config.get("model")
    if not isinstance(score, int | float) or not isinstance(model, dict) or not isinstance(model.get("model"), str):
        raise RolloutError(f"{manifest.address}: its manifest records no {metric} or no model evaluated")
    return Evaluated(manifest.address, model["model"], float(score), frozenset(ref.digest for ref in manifest.inputs))


def gate(config: RolloutConfig, new: Evaluated, served_model: str, served: Evaluated | None) -> str | None:
    """Why the model of ``new`` must not replace ``served_model`` (evaluated as ``served``, if known), or
    ``None``: roll it out."""
    metric = config.metric
    if config.model is not None and config.model != new.model:
        return f"{new.address} evaluated {new.model}, not {config.model}: evaluate that model first"
    if new.model == served_model:
        return f"{new.model} is already served"
    if config.min_f1 is not None and new.score < config.min_f1:
        return f"{metric} {new.score:.4f} of {new.model} ({new.address}) is below min_f1 {config.min_f1:.4f}"
    if not config.not_worse or served is None:
        return None
    if served.sets != new.sets:
        return (
            f"{new.address} and the served model's evaluation {served.address} are on different eval sets: "
            "their scores do not compare (evaluate both on the same sets, or set not_worse: false)"
        )
    if new.score < served.score:
        return (
            f"{metric} {new.score:.4f} of {new.model} ({new.address}) is below the served {served.model}'s "
            f"{served.score:.4f} ({served.address})"
        )
    return None


def with_model(serve: ServeConfig, model: str) -> ServeConfig:
    """The service's config serving ``model``: only a model server the service starts can be swapped (an
    endpoint's model is that endpoint's business)."""
    if serve.server.kind != "vllm":
        raise RolloutError(f"the service calls an endpoint ({serve.server.base_url}): it starts no model to replace")
    return serve.model_copy(update={"server": serve.server.model_copy(update={"model": model})})


@dataclass(frozen=True)
class Condition:
    """One of a Deployment's status conditions."""

    type: str
    status: str
    reason: str | None = None
    message: str | None = None


def progress(
    *,
    generation: int,
    observed: int,
    replicas: int,
    updated: int,
    available: int,
    total: int,
    conditions: Sequence[Condition],
) -> tuple[bool, str | None]:
    """(done, failure) of a rolling Deployment: done once the controller has seen the change (``observed``
    generation) and every replica is updated and available with no old one left (``total``); failed when it
    gave up (``Progressing`` false, ``ProgressDeadlineExceeded``)."""
    if observed < generation:
        return False, None
    for c in conditions:
        if c.type == "Progressing" and c.status == "False":
            return False, f"{c.reason}: {c.message}" if c.message else str(c.reason)
    return updated == replicas and available == replicas and total == replicas, None
