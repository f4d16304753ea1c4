"""A teacher that can really be served: the ``paper`` CG preset's teacher is an endpoint whose key comes from the
environment and goes nowhere else, and the Kubernetes backend renders the multi-node vLLM server (LeaderWorkerSet +
Service) that serves it. The pod templates and the Service are validated against the Kubernetes API's own schemas
(strict); the LeaderWorkerSet, a CRD, against the fields of its Go types (kubernetes-sigs/lws,
api/leaderworkerset/v1/leaderworkerset_types.go), as the JobSet tests do."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from flows.jobs import JobFailed
from flows.kubernetes_jobs import manifests
from flows.kubernetes_servers import (
    LWS_NAME_LABEL,
    MultiNodeServer,
    leader_script,
    render_server,
    server_manifests,
    worker_script,
)
from schemas import AnnotateConfig, CGConfig, Endpoint, config_hash
from schemas.configs import PAPER_TEACHER, PAPER_TEACHER_URL, TEACHER_KEY_ENV
from schemas.jobs import FORWARDED_ENV, KubernetesJob, Toleration
from tasks.llm import LLMClient, MissingKeyError, endpoint_api_key
from tasks.store import Store

K8S = kubernetes_validate.latest_version()
SECRET = "sk-never-written-3f9c2a"
BACKEND = KubernetesJob(
    namespace="ml",
    cache_claim="models",
    node_selector={"gpu": "h100"},
    tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    image_pull_secrets=["registry"],
    service_account="rner",
)
R1 = MultiNodeServer(model=PAPER_TEACHER, nodes=2, gpus_per_node=8)

LWS_SPEC = {"replicas", "leaderWorkerTemplate", "rolloutStrategy", "startupPolicy", "networkConfig"}
LWS_TEMPLATE = {
    "leaderTemplate", "workerTemplate", "size", "restartPolicy", "subGroupPolicy", "volumeClaimTemplates",
    "persistentVolumeClaimRetentionPolicy",
}  # fmt: skip
"""The fields of LeaderWorkerSetSpec and LeaderWorkerTemplate (leaderworkerset.x-k8s.io/v1)."""


def as_pod(template: dict[str, Any]) -> dict[str, Any]:
    """A pod template as the Pod the LWS controller makes of it, validated strictly."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x", **template["metadata"]},
        "spec": template["spec"],
    }
    kubernetes_validate.validate(pod, K8S, strict=True)
    return pod


# --- the multi-node server ----------------------------------------------------------------------------------


def test_the_server_is_a_leader_worker_set_and_a_service() -> None:
    lws, service = server_manifests(R1, BACKEND)
    assert (lws["apiVersion"], lws["kind"]) == ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    assert lws["metadata"] == {"name": "vllm-deepseek-r1", "namespace": "ml", "labels": lws["metadata"]["labels"]}
    spec = lws["spec"]
    assert set(spec) <= LWS_SPEC and set(spec["leaderWorkerTemplate"]) <= LWS_TEMPLATE
    assert spec["replicas"] == 1 and spec["startupPolicy"] == "LeaderCreated"  # LeaderReady would deadlock
    template = spec["leaderWorkerTemplate"]
    assert template["size"] == 2 and template["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = as_pod(template["leaderTemplate"]), as_pod(template["workerTemplate"])
    for pod in (leader, worker):
        [container] = pod["spec"]["containers"]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
        assert container["image"] == "rner-vllm:0.1.0"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes[mounts["/var/lib/rner"]]["persistentVolumeClaim"] == {"claimName": "models"}  # one download
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert pod["spec"]["nodeSelector"] == {"gpu": "h100"} and pod["spec"]["imagePullSecrets"] == [
            {"name": "registry"}
        ]
        assert "restartPolicy" not in pod["spec"]  # the StatefulSets' own (Always)

    # The Service reaches the leader pod, on the port vLLM listens on.
    kubernetes_validate.validate(service, K8S, strict=True)
    assert service["metadata"]["name"] == "vllm-deepseek-r1" and service["spec"]["type"] == "ClusterIP"
    selector = service["spec"]["selector"]
    leader_labels = {**template["leaderTemplate"]["metadata"]["labels"], LWS_NAME_LABEL: "vllm-deepseek-r1"}
    worker_labels = {**template["workerTemplate"]["metadata"]["labels"], LWS_NAME_LABEL: "vllm-deepseek-r1"}
    assert selector.items() <= leader_labels.items() and not selector.items() <= worker_labels.items()
    [port] = service["spec"]["ports"]
    [leader_container] = leader["spec"]["containers"]
    assert port["targetPort"] == leader_container["ports"][0]["containerPort"] == 8000
    assert leader_container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}


def test_the_leader_runs_a_ray_head_and_vllm_over_both_nodes_and_workers_join_it() -> None:
    lws, _ = server_manifests(R1, BACKEND)
    template = lws["spec"]["leaderWorkerTemplate"]
    [leader] = template["leaderTemplate"]["spec"]["containers"]
    [worker] = template["workerTemplate"]["spec"]["containers"]
    assert leader["command"] == ["sh", "-c", leader_script(R1)] and worker["command"] == ["sh", "-c", worker_script(R1)]
    head, wait, serve = leader_script(R1).splitlines()[1], leader_script(R1), leader_script(R1).splitlines()[-1]
    assert head == "vllm-python -m ray.scripts.scripts start --head --port=6379 --disable-usage-stats"
    assert '"$LWS_GROUP_SIZE" 1800' in wait  # every pod's Ray node has joined before vLLM starts
    assert serve.startswith("exec vllm-python -m vllm.entrypoints.openai.api_server --model deepseek-ai/DeepSeek-R1")
    for flag in ("--tensor-parallel-size 8", "--pipeline-parallel-size 2", "--distributed-executor-backend ray"):
        assert flag in serve
    assert f"--served-model-name {PAPER_TEACHER} --host 0.0.0.0 --port 8000" in serve
    assert 'start --address="$LWS_LEADER_ADDRESS:6379" --block' in worker_script(R1)
    for script in (leader_script(R1), worker_script(R1)):  # valid shell
        subprocess.run(["sh", "-n", "-c", script], check=True)


def test_the_api_key_and_hub_token_come_from_secrets() -> None:
    lws, _ = server_manifests(R1, BACKEND)
    template = lws["spec"]["leaderWorkerTemplate"]
    [leader] = template["leaderTemplate"]["spec"]["containers"]
    [worker] = template["workerTemplate"]["spec"]["containers"]
    env = {e["name"]: e for e in leader["env"]}
    key = {"name": "rner-store", "key": TEACHER_KEY_ENV, "optional": False}  # the Secret the stages' pods read too
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == key
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["HF_HOME"]["value"] == "/var/lib/rner/hf"
    assert "VLLM_API_KEY" not in {e["name"] for e in worker["env"]}  # only the leader serves
    open_server = server_manifests(R1.model_copy(update={"api_key_secret": None}), BACKEND)[0]
    [leader] = open_server["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"]
    assert "VLLM_API_KEY" not in {e["name"] for e in leader["env"]}


def test_the_paper_teacher_endpoint_is_the_rendered_service() -> None:
    teacher = CGConfig.preset("paper").annotate.teacher
    assert isinstance(teacher, Endpoint)
    assert (teacher.base_url, teacher.model, teacher.api_key_env) == (PAPER_TEACHER_URL, PAPER_TEACHER, TEACHER_KEY_ENV)
    _, service = server_manifests(MultiNodeServer(model=PAPER_TEACHER), BACKEND)  # the defaults
    url = urlparse(teacher.base_url)
    assert (url.hostname, url.port, url.path) == (
        service["metadata"]["name"],
        service["spec"]["ports"][0]["port"],
        "/v1",
    )
    assert CGConfig.preset("paper").judge.judge.kind == "vllm"  # the judge (Qwen3-32B) keeps its one-node launch


def test_render_server_plans_first() -> None:
    with pytest.raises(JobFailed, match=r"1 node\(s\) x 8 h100-80gb: .*needs 78 GiB of weights per GPU.*more nodes"):
        render_server(R1.model_copy(update={"nodes": 1}), BACKEND)
    with pytest.raises(JobFailed, match=r"~627 GiB of weights do not fit the model cache .*cache_claim"):
        render_server(R1, KubernetesJob())  # an emptyDir of 200Gi per node
    [lws, service] = yaml.safe_load_all(render_server(R1, BACKEND))
    assert lws["kind"] == "LeaderWorkerSet" and service["kind"] == "Service"
    assert render_server(R1, BACKEND).startswith("# fits: weights 39.2 GiB per GPU on 16 x h100-80gb")
    assert render_server(R1.model_copy(update={"nodes": 1}), BACKEND, gpu="h200-141gb").startswith("# fits")


def test_rner_k8s_render_server(tmp_path: Any) -> None:
    from tasks.cli import _plugins, app

    _plugins()
    backend = tmp_path / "k8s.yaml"
    backend.write_text("namespace: ml\ncache_claim: models\n")
    runner = CliRunner()
    args = ["k8s", "render-server", "--model", PAPER_TEACHER, "--nodes", "2", "--gpus-per-node", "8"]
    result = runner.invoke(app, [*args, "--backend", str(backend), "--extra-arg", "--enable-expert-parallel"])
    assert result.exit_code == 0, result.output
    lws, service = yaml.safe_load_all(result.output)
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2 and service["metadata"]["namespace"] == "ml"
    [leader] = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"]
    assert "--enable-expert-parallel" in leader["command"][2]
    result = runner.invoke(app, [*args[:-4], "--nodes", "1", "--backend", str(backend)])
    assert result.exit_code == 1


# --- the key: from the environment, nowhere else -------------------------------------------------------------


def test_the_key_is_read_from_the_environment_when_the_stage_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = AnnotateConfig.preset("paper").teacher
    assert isinstance(teacher, Endpoint)
    monkeypatch.delenv(TEACHER_KEY_ENV, raising=False)
    with pytest.raises(MissingKeyError, match=rf"\${TEACHER_KEY_ENV}, which is not set here"):
        endpoint_api_key(teacher)
    monkeypatch.setenv(TEACHER_KEY_ENV, SECRET)
    assert endpoint_api_key(teacher) == SECRET

    async def client_key() -> str:
        async with LLMClient(teacher) as llm:
            return llm._client.api_key

    assert asyncio.run(client_key()) == SECRET
    assert endpoint_api_key(Endpoint(base_url="http://h/v1", model="m")) == "EMPTY"
    masked = Endpoint.model_validate_json(Endpoint(base_url="http://h/v1", model="m", api_key=SECRET).model_dump_json())
    with pytest.raises(MissingKeyError, match="masked"):
        endpoint_api_key(masked)
    with pytest.raises(ValueError, match="give at most one"):
        Endpoint(base_url="http://h/v1", model="m", api_key=SECRET, api_key_env="K")
    assert TEACHER_KEY_ENV in FORWARDED_ENV  # docker jobs get it from the orchestrator's environment


def test_the_key_never_reaches_configs_hashes_or_manifests(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.cli import app

    monkeypatch.setenv(TEACHER_KEY_ENV, SECRET)
    shown = CliRunner().invoke(app, ["config", "show", "cg", "--preset", "paper"])
    assert shown.exit_code == 0 and TEACHER_KEY_ENV in shown.output and SECRET not in shown.output
    config = AnnotateConfig.preset("paper", input="raw/passages/x")
    elsewhere = config.model_copy(update={"teacher": config.teacher.model_copy(update={"api_key_env": "OTHER"})})
    assert config_hash(config) == config_hash(elsewhere)  # where the key comes from does not change the output
    [job] = manifests("annotate", config, Store("s3://rner-test/k8s"), KubernetesJob(namespace="ml"), name="rner-a-1")
    text = json.dumps(job)
    assert SECRET not in text and TEACHER_KEY_ENV in text  # the variable's name only, in the config it is given
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "rner-store", "optional": False}}]  # the key's source
    assert "nvidia.com/gpu" not in (container.get("resources") or {}).get("limits", {})  # an endpoint needs no GPU
    assert SECRET not in json.dumps(server_manifests(R1, BACKEND))
