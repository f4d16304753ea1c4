"""The extraction service's Kubernetes manifests (ConfigMap, Deployment, Service), validated against the Kubernetes
API's own schemas (strict), and what they must say: the pod runs the very config the ConfigMap holds, on the GPUs
its vLLM server needs, ready only when ``/health`` is, with time to finish requests in flight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from flows.kubernetes_service import ServiceDeployment, service_manifests
from schemas import Endpoint, VLLMLaunch
from schemas.jobs import KubernetesJob
from schemas.service import TOKEN_ENV, ServeConfig
from tasks.serving import STOP_GRACE_S
from tasks.store import Store

K8S = kubernetes_validate.latest_version()
BACKEND = KubernetesJob(namespace="ml", cache_claim="models", node_selector={"gpu": "h100"}, service_account="rner")
MODEL = "store:models/re/grpo/abc"
SPEC = ServiceDeployment(
    serve=ServeConfig(server=VLLMLaunch(model=MODEL, tensor_parallel_size=2), labels=["person"], port=9000),
    replicas=3,
    token_secret="serve-token",
)


def rendered(spec: ServiceDeployment = SPEC) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    config_map, deployment, service = service_manifests(spec, BACKEND, Store("s3://ml/rner"))
    for manifest in (config_map, deployment, service):
        kubernetes_validate.validate(manifest, K8S, strict=True)
    return config_map, deployment, service


def test_the_pods_serve_the_config_map_on_their_gpus() -> None:
    config_map, deployment, _ = rendered()
    served = ServeConfig.model_validate(yaml.safe_load(config_map["data"]["serve.yaml"]))
    assert served == SPEC.serve.model_copy(update={"host": "0.0.0.0"})  # every interface of the pod
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["rner", "serve", "--config", "/etc/rner/serve.yaml"]
    assert container["image"] == "rner-vllm:0.1.0"  # the project with the serve extra, beside vLLM
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}  # tensor parallel 2
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/etc/rner"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes[mounts["/var/lib/rner"]]["persistentVolumeClaim"] == {"claimName": "models"}  # the model cache
    env = {e["name"]: e for e in container["env"]}
    assert env["RNER_STORE"]["value"] == "s3://ml/rner"  # where store: references resolve
    assert env[TOKEN_ENV]["valueFrom"]["secretKeyRef"] == {"name": "serve-token", "key": TOKEN_ENV, "optional": False}
    assert container["envFrom"] == [{"secretRef": {"name": "rner-store", "optional": False}}]  # store credentials
    assert deployment["spec"]["replicas"] == 3 and pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_ready_on_health_and_time_to_drain() -> None:
    _, deployment, service = rendered()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"containerPort": 9000, "name": "http", "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= SPEC.serve.server.startup_timeout_s
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= SPEC.serve.shutdown_grace_s + STOP_GRACE_S
    # The Service reaches exactly these pods, on the port they listen on.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["ports"] == [{"name": "http", "port": 9000, "protocol": "TCP", "targetPort": "http"}]


def test_a_new_config_rolls_the_pods_and_an_endpoint_needs_no_gpu() -> None:
    _, before, _ = rendered()
    other = SPEC.model_copy(update={"serve": SPEC.serve.model_copy(update={"labels": ("person", "city")})})
    _, after, _ = rendered(other)
    hash_of = lambda d: d["spec"]["template"]["metadata"]["annotations"]["rner.config-hash"]  # noqa: E731
    assert hash_of(before) != hash_of(after)
    front = ServeConfig(server=Endpoint(base_url="http://vllm:8000/v1", model="ner"), tokenizer=MODEL, port=8080)
    _, deployment, _ = rendered(ServiceDeployment(serve=front))
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert "resources" not in container or "nvidia.com/gpu" not in (container["resources"].get("limits") or {})
    assert TOKEN_ENV not in {e["name"] for e in container["env"]}  # no token_secret: no token
    with pytest.raises(ValidationError, match="a Service needs a fixed port"):
        ServiceDeployment(serve=front.model_copy(update={"port": 0}))


def test_rner_k8s_render_service(tmp_path: Path) -> None:
    from tasks.cli import _plugins, app

    _plugins()
    backend = tmp_path / "k8s.yaml"
    backend.write_text("namespace: ml\ncache_claim: models\n")
    base = tmp_path / "serve.yaml"
    base.write_text("server: {kind: vllm, model: x, dtype: float16}\nmax_batch: 16\n")
    args = ["k8s", "render-service", "--model", MODEL, "--labels", "person, city", "--gpus-per-pod", "4"]
    args += ["--backend", str(backend), "--config", str(base), "--store", "s3://ml/rner", "--replicas", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config_map, deployment, service = yaml.safe_load_all(result.output)
    for manifest in (config_map, deployment, service):
        kubernetes_validate.validate(manifest, K8S, strict=True)
    served = ServeConfig.model_validate(yaml.safe_load(config_map["data"]["serve.yaml"]))
    assert isinstance(served.server, VLLMLaunch)
    assert (served.server.model, served.server.tensor_parallel_size, served.server.dtype) == (MODEL, 4, "float16")
    assert served.labels == ("person", "city") and served.max_batch == 16
    assert deployment["spec"]["replicas"] == 2 and service["metadata"]["namespace"] == "ml"
