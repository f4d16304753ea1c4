"""Roll an evaluated model out to the extraction service on Kubernetes: a flow run that gates, patches the
Deployment ``rner k8s render-service`` rendered, and waits until every pod serves the new model.

    serve_rollout(RolloutConfig(evaluation="evals/evaluate/abc", min_f1=0.6), KubernetesJob(namespace="ml"))

``rner serve`` itself stays a long-running process in the Deployment's pods; this flow only changes what they
serve, one pod at a time:

- **Gate** (``tasks.rollout.gate``): the evaluation's model, its score against ``min_f1`` and, with ``not_worse``,
  against the served model's evaluation, which the last rollout recorded on the Deployment (annotation
  ``rner.evaluation``). A refused model changes nothing: the run completes with ``rolled: false`` and the reason.
- **Patch** (``AppsV1Api.patch_namespaced_deployment``, with the read ``resourceVersion``: a Deployment changed
  meanwhile is a conflict, not overwritten): the pod template's ``rner serve`` command gets ``--model <model>``
  (the option overrides the ConfigMap's ``serve.yaml``, and an old pod that restarts keeps its own command), its
  ``rner.config-hash`` annotation becomes the hash of the config it now serves.
- **Wait**: until the controller has seen the change (``observedGeneration``) and every replica is updated and
  available with no old one left. The rendered strategy (``maxUnavailable: 0``) keeps the old pods serving until
  their replacements are ready, so a failure (not ready within ``timeout_s``, the progress deadline exceeded, an
  API error, a cancelled run) is undone by patching the previous template back: the flow run fails, naming the
  reason, and the old model is still what the Service answers with.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prefect import flow, get_run_logger

from flows.kubernetes_jobs import API_TIMEOUT, api_client, api_error
from flows.kubernetes_service import CONFIG_FILE, CONFIG_HASH_ANNOTATION, CONTAINER
from schemas.base import config_hash
from schemas.jobs import KubernetesJob
from schemas.rollout import RolloutConfig
from schemas.service import ServeConfig
from tasks.config import ConfigError, build_config
from tasks.rollout import Condition, RolloutError, evaluated, gate, progress, with_model
from tasks.store import Store

EVALUATION_ANNOTATION = "rner.evaluation"
"""The Deployment's annotation naming the evaluation of the model it serves (what ``not_worse`` compares with)."""
MODEL_OPTION = "--model"


def _container(template: client.V1PodTemplateSpec, where: str) -> client.V1Container:
    for container in template.spec.containers:
        if container.name == CONTAINER:
            return container
    raise RolloutError(f"{where}: no container {CONTAINER!r}: not a Deployment `rner k8s render-service` rendered")


def model_option(command: list[str]) -> str | None:
    """The ``--model`` an ``rner serve`` command line gives, if any."""
    return command[command.index(MODEL_OPTION) + 1] if MODEL_OPTION in command[:-1] else None


def with_model_option(command: list[str], model: str) -> list[str]:
    """``command`` serving ``model``: its ``--model`` replaced, or added."""
    if MODEL_OPTION in command[:-1]:
        at = command.index(MODEL_OPTION) + 1
        return [*command[:at], model, *command[at + 1 :]]
    return [*command, MODEL_OPTION, model]


class _Service:
    """The API calls of one rollout: read the Deployment and its ConfigMap, patch, watch."""

    def __init__(self, api: client.ApiClient, backend: KubernetesJob, name: str) -> None:
        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)
        self.namespace, self.name = backend.namespace, name
        self.poll_s = backend.poll_s

    def __str__(self) -> str:
        return f"Deployment {self.namespace}/{self.name}"

    def read(self) -> client.V1Deployment:
        try:
            return self.apps.read_namespaced_deployment(self.name, self.namespace, _request_timeout=API_TIMEOUT)
        except ApiException as e:
            raise RolloutError(f"{self}: cannot read it: {api_error(e)}") from None

    def served(self, deployment: client.V1Deployment) -> ServeConfig:
        """The ``ServeConfig`` the pods run: the mounted ConfigMap's, with the command's ``--model``."""
        template = deployment.spec.template
        maps = [v.config_map.name for v in template.spec.volumes or () if v.name == "config" and v.config_map]
        if not maps:
            raise RolloutError(f"{self}: no `config` ConfigMap volume: not a Deployment `rner k8s render-service` made")
        try:
            config_map = self.core.read_namespaced_config_map(maps[0], self.namespace, _request_timeout=API_TIMEOUT)
            source = f"ConfigMap {self.namespace}/{maps[0]} {CONFIG_FILE}"
            serve = build_config(ServeConfig, yaml.safe_load((config_map.data or {}).get(CONFIG_FILE) or "{}"), source)
        except ApiException as e:
            raise RolloutError(f"{self}: cannot read its ConfigMap {maps[0]}: {api_error(e)}") from None
        except (ConfigError, yaml.YAMLError) as e:
            raise RolloutError(str(e)) from None
        model = model_option(_container(template, str(self)).command or [])
        return with_model(serve, model) if model else serve

    def patch(self, template: client.V1PodTemplateSpec, evaluation: str | None, version: str | None = None) -> None:
        """The pod template and the served evaluation replaced; with ``version``, only if still that version."""
        current = self.read()
        body = client.V1Deployment(
            metadata=client.V1ObjectMeta(annotations={EVALUATION_ANNOTATION: evaluation}, resource_version=version),
            spec=client.V1DeploymentSpec(selector=current.spec.selector, template=template),
        )
        try:
            self.apps.patch_namespaced_deployment(self.name, self.namespace, body, _request_timeout=API_TIMEOUT)
        except ApiException as e:
            raise RolloutError(f"{self}: cannot patch it: {api_error(e)}") from None

    def wait(self, timeout_s: float) -> str | None:
        """``None`` once every replica serves the patched template, else why it never will."""
        deadline = time.monotonic() + timeout_s
        while True:
            deployment = self.read()
            status, replicas = deployment.status, deployment.spec.replicas or 0
            counts = {
                "updated": status.updated_replicas or 0,
                "available": status.available_replicas or 0,
                "total": status.replicas or 0,
            }
            done, failure = progress(
                generation=deployment.metadata.generation or 0,
                observed=status.observed_generation or 0,
                replicas=replicas,
                conditions=[Condition(c.type, c.status, c.reason, c.message) for c in status.conditions or ()],
                **counts,
            )
            if failure or done:
                return failure
            if time.monotonic() > deadline:
                return (
                    f"not ready after {timeout_s:g} s: {counts['updated']} of {replicas} pods updated, "
                    f"{counts['available']} available"
                )
            time.sleep(self.poll_s)


def roll_out(
    config: RolloutConfig, backend: KubernetesJob, store: Store, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Gate, patch, wait (see the module): ``rolled`` and the ``model`` served after, the ``previous`` one, and
    the gate's ``reason`` when it refused. A failed rollout is undone and raises ``RolloutError``."""
    new = evaluated(store.load(config.evaluation), config.metric)
    service = _Service(api_client(backend), backend, config.deployment)
    deployment = service.read()
    serve = service.served(deployment)
    previous = serve.server.model
    recorded = (deployment.metadata.annotations or {}).get(EVALUATION_ANNOTATION)
    served = evaluated(store.load(recorded), config.metric) if recorded else None
    refusal = gate(config, new, previous, served)
    result: dict[str, Any] = {"rolled": False, "model": previous, "previous": previous, "evaluation": new.address}
    if refusal is not None:
        log(f"{service}: not rolled out: {refusal}")
        return result | {"reason": refusal}
    new_serve = with_model(serve, new.model)
    template = copy.deepcopy(deployment.spec.template)
    container = _container(template, str(service))
    container.command = with_model_option(container.command or [], new.model)
    template.metadata.annotations = {
        **(template.metadata.annotations or {}),
        CONFIG_HASH_ANNOTATION: config_hash(new_serve),
    }
    log(f"{service}: rolling {previous} -> {new.model} ({config.metric} {new.score:.4f}, {new.address})")
    service.patch(template, new.address, deployment.metadata.resource_version)
    try:
        failure = service.wait(config.timeout_s)
    except Exception as e:  # the API failed while watching: nothing may stay half rolled
        failure = str(e)
    except BaseException:  # a cancelled run, likewise
        service.patch(deployment.spec.template, recorded)
        raise
    if failure is not None:
        service.patch(deployment.spec.template, recorded)
        raise RolloutError(
            f"{service}: the rollout of {new.model} failed: {failure}; undone: its pods keep serving {previous}"
        )
    log(f"{service}: every pod serves {new.model}")
    return result | {"rolled": True, "model": new.model}


@flow(name="serve-rollout")
def serve_rollout(
    config: RolloutConfig,
    backend: KubernetesJob = KubernetesJob(),  # noqa: B008
    store: str | None = None,
) -> dict[str, Any]:
    """Serve an evaluated model on the extraction service's Deployment once it passes the gate (min F1, not
    worse than the served model); a failed rollout is undone and the old model keeps serving."""
    return roll_out(config, backend, Store(store) if store else Store.from_settings(), get_run_logger().info)
