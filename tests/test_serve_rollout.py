"""Rolling an evaluated model out to the extraction service: the gate over real evaluation manifests in a store,
and the rollout of the Deployment ``rner k8s render-service`` renders against a small scripted API server speaking
the client's wire format (as tests/test_kubernetes.py does for Jobs): a better model rolls pod by pod, a worse one
changes nothing, and a rollout whose new pods never get ready (or whose API fails while watching) is undone,
the old pods serving on."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from test_kubernetes import fake_clusters

from flows.kubernetes_service import CONFIG_HASH_ANNOTATION, ServiceDeployment, service_manifests
from flows.serve_rollout import EVALUATION_ANNOTATION, roll_out, serve_rollout
from schemas import EvalConfig, InputRef, VLLMLaunch
from schemas.jobs import KubernetesJob
from schemas.rollout import RolloutConfig
from schemas.service import ServeConfig
from tasks.rollout import RolloutError, evaluated, gate, with_model
from tasks.store import Store

K8S = kubernetes_validate.latest_version()
BACKEND = KubernetesJob(namespace="ml", context="fake", poll_s=0.02)
OLD, NEW, WORSE = "store:models/re/grpo/old", "store:models/re/grpo/new", "store:models/re/grpo/worse"
SPEC = ServiceDeployment(serve=ServeConfig(server=VLLMLaunch(model=OLD), labels=["person"], port=9000), replicas=2)
PATH = "/apis/apps/v1/namespaces/ml/deployments/rner-serve"
Status = Callable[["FakeCluster"], dict[str, Any] | None]


def publish_evaluation(store: Store, model: str, f1: float, sets: str = "crossner") -> str:
    """An ``evaluate`` output as ``rner eval`` publishes it: its config names the model, its stats the F1s."""
    address = f"evals/evaluate/{model.rsplit('/', 1)[-1]}-{sets}"
    out = store.output(address)
    files = [out.put_file("metrics", json.dumps({"average_f1": f1}).encode(), role="metrics", suffix=".json")]
    inputs = [InputRef(address=f"datasets/eval/{sets}", digest=hashlib.sha256(sets.encode()).hexdigest())]
    stats = {"average_f1": f1, "average_f1_strict": f1 - 0.05, "micro_f1": f1}
    config = EvalConfig(model=VLLMLaunch(model=model), datasets=[f"datasets/eval/{sets}"])
    out.publish(kind="predictions", stage="evaluate", config=config, files=files, inputs=inputs, stats=stats)
    return address


class FakeCluster(ThreadingHTTPServer):
    """The rendered ConfigMap and Deployment in namespace ``ml``; a PATCH applies the template and annotations as
    the strategic merge does for a whole template, and bumps the generation; ``status`` scripts what the
    Deployment controller reports."""

    def __init__(self, status: Status) -> None:
        super().__init__(("127.0.0.1", 0), FakeApi)
        config_map, deployment, _ = service_manifests(SPEC, BACKEND)
        deployment["metadata"] |= {"generation": 1, "resourceVersion": "1"}
        self.config_map, self.deployment, self.status = config_map, deployment, status
        self.rendered = copy.deepcopy(deployment)
        self.patches: list[dict[str, Any]] = []
        self.polls = 0
        """Reads of the Deployment since the last patch."""

    @property
    def generation(self) -> int:
        return int(self.deployment["metadata"]["generation"])

    def apply(self, patch: dict[str, Any]) -> int:
        metadata = self.deployment["metadata"]
        version = patch["metadata"].get("resourceVersion")
        if version is not None and version != metadata["resourceVersion"]:
            return 409
        self.patches.append(patch)
        annotations = {**metadata.get("annotations", {}), **patch["metadata"].get("annotations", {})}
        metadata["annotations"] = {k: v for k, v in annotations.items() if v is not None}
        self.deployment["spec"]["template"] = patch["spec"]["template"]
        metadata["generation"] += 1
        metadata["resourceVersion"] = str(int(metadata["resourceVersion"]) + 1)
        self.polls = 0
        return 200


class FakeApi(BaseHTTPRequestHandler):
    server: FakeCluster

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        server = self.server
        if self.path == PATH:
            server.polls += 1
            status = server.status(server)
            if status is None:  # the API server failing
                self.reply({"kind": "Status", "message": "etcdserver: request timed out"}, 500)
            else:
                self.reply({**server.deployment, "status": status})
        elif self.path == "/api/v1/namespaces/ml/configmaps/rner-serve":
            self.reply(server.config_map)
        else:
            self.reply({"kind": "Status", "message": f"no {self.path}"}, 404)

    def do_PATCH(self) -> None:
        assert self.path == PATH and self.headers["Content-Type"] == "application/strategic-merge-patch+json"
        code = self.server.apply(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        message = {"kind": "Status", "message": "the object has been modified"}
        self.reply(self.server.deployment if code == 200 else message, code)


def steady(cluster: FakeCluster) -> dict[str, Any]:
    """Every replica on the current template, available."""
    return {"observedGeneration": cluster.generation, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}


def rolling(cluster: FakeCluster) -> dict[str, Any]:
    """After a patch: not yet seen, then one new pod beside the two old ones, then all new."""
    if not cluster.patches or cluster.polls > 4:
        return steady(cluster)
    if cluster.polls <= 2:
        return {**steady(cluster), "observedGeneration": cluster.generation - 1}
    return {"observedGeneration": cluster.generation, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}


def never_ready(cluster: FakeCluster) -> dict[str, Any]:
    """The new pod never gets ready; the old two serve on (maxUnavailable 0)."""
    if len(cluster.patches) != 1:  # before the rollout, and after it was undone
        return steady(cluster)
    return {"observedGeneration": cluster.generation, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}


def deadline_exceeded(cluster: FakeCluster) -> dict[str, Any]:
    status = never_ready(cluster)
    if len(cluster.patches) == 1 and cluster.polls > 2:
        message = 'ReplicaSet "rner-serve-7d9f" has timed out progressing.'
        status["conditions"] = [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": message}
        ]
    return status


def api_down_once(cluster: FakeCluster) -> dict[str, Any] | None:
    """The API server fails the first read after the patch."""
    return None if len(cluster.patches) == 1 and cluster.polls == 1 else never_ready(cluster)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Status], FakeCluster]]:
    with fake_clusters(tmp_path, monkeypatch) as serve:

        def start(status: Status) -> FakeCluster:
            server = FakeCluster(status)
            serve(server)
            return server

        yield start


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_a_better_model_rolls_out_pod_by_pod_and_a_worse_one_changes_nothing(
    prefect_server: None, cluster: Callable[[Status], FakeCluster], store: Store
) -> None:
    fake = cluster(rolling)
    better = publish_evaluation(store, NEW, 0.62)
    result = serve_rollout(RolloutConfig(evaluation=better, min_f1=0.5), BACKEND, str(store.url))
    assert result == {"rolled": True, "model": NEW, "previous": OLD, "evaluation": better}
    [patch] = fake.patches
    assert patch["metadata"]["resourceVersion"] == "1"  # a Deployment changed meanwhile would be a conflict
    deployment = fake.deployment
    kubernetes_validate.validate(deployment, K8S, strict=True)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["rner", "serve", "--config", "/etc/rner/serve.yaml", "--model", NEW]
    # The pods now carry the config hash that render-service gives a spec serving the new model.
    _, rendered_new, _ = service_manifests(SPEC.model_copy(update={"serve": with_model(SPEC.serve, NEW)}), BACKEND)
    hashes = (deployment["spec"]["template"]["metadata"]["annotations"], rendered_new["spec"]["template"]["metadata"])
    assert hashes[0][CONFIG_HASH_ANNOTATION] == hashes[1]["annotations"][CONFIG_HASH_ANNOTATION]
    assert deployment["metadata"]["annotations"][EVALUATION_ANNOTATION] == better
    assert fake.polls >= 5  # it waited through "not yet seen" and "one new pod beside the old ones"

    # Worse than what is served (on the same sets): refused, nothing patched.
    worse = publish_evaluation(store, WORSE, 0.58)
    seen: list[str] = []
    refused = roll_out(RolloutConfig(evaluation=worse, min_f1=0.5), BACKEND, store, seen.append)
    assert refused["rolled"] is False and refused["model"] == NEW and len(fake.patches) == 1
    assert refused["reason"] == (
        f"average_f1 0.5800 of {WORSE} ({worse}) is below the served {NEW}'s 0.6200 ({better})"
    )
    assert seen == [f"Deployment ml/rner-serve: not rolled out: {refused['reason']}"]


@pytest.mark.parametrize(
    ("status", "timeout_s", "reason"),
    [
        (never_ready, 0.5, "not ready after 0.5 s: 1 of 2 pods updated, 2 available"),
        (deadline_exceeded, 60.0, 'ProgressDeadlineExceeded: ReplicaSet "rner-serve-7d9f" has timed out progressing.'),
        (api_down_once, 60.0, "Deployment ml/rner-serve: cannot read it: etcdserver: request timed out"),
    ],
)
def test_a_failed_rollout_is_undone_and_the_old_pods_serve_on(
    cluster: Callable[[Status], FakeCluster], store: Store, status: Status, timeout_s: float, reason: str
) -> None:
    fake = cluster(status)
    config = RolloutConfig(evaluation=publish_evaluation(store, NEW, 0.7), timeout_s=timeout_s)
    with pytest.raises(RolloutError) as failed:
        roll_out(config, BACKEND, store, print)
    assert str(failed.value) == (
        f"Deployment ml/rner-serve: the rollout of {NEW} failed: {reason}; undone: its pods keep serving {OLD}"
    )
    assert len(fake.patches) == 2  # the rollout, then the previous template back
    assert fake.deployment["spec"]["template"] == fake.rendered["spec"]["template"]
    assert EVALUATION_ANNOTATION not in fake.deployment["metadata"].get("annotations", {})


def test_the_gate_passes_a_model_only_on_its_own_good_enough_evaluation(store: Store) -> None:
    served = evaluated(store.load(publish_evaluation(store, OLD, 0.6)), "average_f1")
    new = evaluated(store.load(publish_evaluation(store, NEW, 0.65)), "average_f1")
    elsewhere = evaluated(store.load(publish_evaluation(store, NEW, 0.9, sets="mit")), "average_f1")
    config = RolloutConfig(evaluation=new.address)
    assert gate(config, new, OLD, served) is None
    assert gate(config, new, OLD, None) is None  # never rolled: only min_f1 applies
    assert gate(config.model_copy(update={"min_f1": 0.7}), new, OLD, served) == (
        f"average_f1 0.6500 of {NEW} ({new.address}) is below min_f1 0.7000"
    )
    assert "different eval sets" in str(gate(config, elsewhere, OLD, served))
    assert gate(config.model_copy(update={"not_worse": False}), elsewhere, OLD, served) is None
    assert gate(config, new, NEW, served) == f"{NEW} is already served"
    assert gate(config.model_copy(update={"model": WORSE}), new, OLD, served) == (
        f"{new.address} evaluated {NEW}, not {WORSE}: evaluate that model first"
    )
    strict = evaluated(store.load(new.address), "average_f1_strict")
    assert strict.score == pytest.approx(0.60)
    store.output("models/ct/sft/x").publish(kind="model", stage="sft", config=config, files=[])
    with pytest.raises(RolloutError, match=r"^models/ct/sft/x: a sft output, not an evaluation"):
        evaluated(store.load("models/ct/sft/x"), "average_f1")
