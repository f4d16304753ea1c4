"""``rner`` commands that need Prefect, added to the ``rner`` app as a plugin (entry point group
``rner.plugins``), so that ``tasks/`` never imports Prefect and ``rner`` still works without it.

    rner pipeline [--preset smoke] # the whole pipeline as a flow run on a local server (left running)
    rner recipe run NAME [--smoke] # one of the paper's experiments (recipes/NAME.yaml) the same way
    rner recipe list               # the recipes
    rner down                      # stop that server
    rner up [--port 4200]          # local Prefect server + process worker, deployments registered
    rner deploy render             # regenerate deploy/prefect.yaml from flows/deployments.py
    rner k8s render-server --model deepseek-ai/DeepSeek-R1 --nodes 2   # a multi-node vLLM server, for kubectl
    rner k8s render-service --model store:models/re/x --labels person  # the extraction service (rner serve)
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console

from flows.images import cli_build, cli_wheelhouse
from flows.locks import cli_lock
from schemas import DEMO_PASSAGES
from tasks.demo import seed_passages
from tasks.errors import RnerError
from tasks.settings import Settings
from tasks.store import Store

if TYPE_CHECKING:
    from uuid import UUID

    from prefect import Flow

    from schemas import Config

REPO = Path(__file__).resolve().parent.parent
SERVER_DIR = Settings().home_dir / "prefect"
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port of the Prefect server and UI on 127.0.0.1.")]


out = Console()


def _prefect() -> str:
    return shutil.which("prefect") or str(Path(sys.executable).parent / "prefect")


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def interruptible() -> None:
    """``preexec_fn`` of the children that ``stop_process`` stops: a command started in the background by a
    non-interactive shell (``rner up &`` in a script, CI runners) ignores SIGINT, children inherit that, and
    Prefect's server and worker (which pass SIGTERM on to their own child as SIGINT) would never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Ctrl-C to a child started in its own session (``prefect`` commands run their work in a grandchild),
    then SIGKILL to all of it after ``timeout``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _server_env(port: int) -> tuple[str, dict[str, str]]:
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/api"
    return url, {**os.environ, "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api, "RNER_REPO": str(REPO)}


def start_server(port: int, *, detach: bool) -> subprocess.Popen[bytes] | None:
    """A Prefect server on 127.0.0.1:``port``, unless one answers there already (then None). A detached one
    outlives this command, its log and pid under ``$RNER_HOME/prefect/`` (``rner down`` stops it)."""
    url, env = _server_env(port)
    if _healthy(f"{url}/api"):
        return None
    out.print(f"starting the Prefect server on {url} ...")
    command = [_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if detach:
        SERVER_DIR.mkdir(parents=True, exist_ok=True)
        with open(SERVER_DIR / "server.log", "ab") as log:
            server = subprocess.Popen(
                command, env=env, stdout=log, stderr=log, start_new_session=True, preexec_fn=interruptible
            )
        (SERVER_DIR / "server.pid").write_text(str(server.pid))
    else:  # its own session too: a Ctrl-C reaches `rner up` alone, which then stops the worker before the server
        server = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=interruptible)
    deadline = time.monotonic() + 120
    while not _healthy(f"{url}/api"):
        if server.poll() is not None or time.monotonic() > deadline:
            stop_process(server)
            raise RnerError(f"the Prefect server did not start on {url}")
        time.sleep(0.5)
    return server


def up(
    port: PortOption = 4200,
    worker: Annotated[bool, typer.Option(help="Also run a process worker for the rner-process pool.")] = True,
) -> None:
    """Start a local Prefect server (UI on 127.0.0.1), create the work pools (process, docker, kubernetes),
    register the deployments of deploy/prefect.yaml, and run a worker for the process pool, until Ctrl-C."""
    from flows.deployments import POOLS, PREFECT_FILE, PROCESS_POOL
    from tasks.serving import raise_on_sigterm

    raise_on_sigterm()  # a SIGTERM stops the children too (they run in their own sessions)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops it, even started in the background
    url, env = _server_env(port)
    children: list[subprocess.Popen[bytes]] = []
    try:
        if server := start_server(port, detach=False):
            children.append(server)
        for pool in POOLS:
            found = subprocess.run([_prefect(), "work-pool", "inspect", pool.name], env=env, capture_output=True)
            if found.returncode != 0:
                create = [_prefect(), "work-pool", "create", pool.name, "--type", pool.type]
                subprocess.run(create, env=env, check=True, capture_output=True)
        deploy = [_prefect(), "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)]
        subprocess.run(deploy, env=env, cwd=REPO, check=True)
        out.print(f"\n[bold]Prefect UI:[/] {url}   (deployments: {url}/deployments)")
        if not worker:
            return
        out.print(f"running a worker for pool {PROCESS_POOL}; Ctrl-C stops it and the server\n")
        worker_command = [_prefect(), "worker", "start", "--pool", PROCESS_POOL]
        children.append(
            subprocess.Popen(worker_command, env=env, cwd=REPO, start_new_session=True, preexec_fn=interruptible)
        )
        children[-1].wait()
    except KeyboardInterrupt:
        pass
    finally:
        # A worker talking to a server that is gone hangs on shutdown: stop the worker first.
        for child in reversed(children):
            stop_process(child)


def down() -> None:
    """Stop the Prefect server that `rner pipeline` left running."""
    pid_file = SERVER_DIR / "server.pid"
    if not pid_file.exists():
        out.print("no detached Prefect server is recorded")
        return
    try:
        os.killpg(int(pid_file.read_text()), signal.SIGINT)
        out.print("stopped the Prefect server")
    except ProcessLookupError:
        out.print("the Prefect server had stopped already")
    pid_file.unlink()


StoreOption = Annotated[str | None, typer.Option(help="Store URL (default: RNER_STORE).")]


def _builds_vllm_env(data: object) -> bool:
    """Whether a dumped config holds a vLLM server that runs in the managed environment (no python, no image)."""
    if isinstance(data, dict):
        if data.get("kind") == "vllm" and not data.get("python") and not data.get("image"):
            return True
        return any(_builds_vllm_env(v) for v in data.values())
    return isinstance(data, list | tuple) and any(_builds_vllm_env(v) for v in data)


def prepare_servers_in_background(config: "Config") -> threading.Thread | None:
    """Builds the managed vLLM environment and converts the default model in a thread while the Prefect server
    starts and the flow begins: the first stage that starts a server waits on the same file locks for what is
    left instead of building it all then (on a first run that is ~40 s earlier). A failure here is left to that
    stage, which builds again and reports it."""
    if Settings().vllm_python or not _builds_vllm_env(config.model_dump(mode="json")):
        return None
    from tasks.models import ensure_default_model
    from tasks.vllm_env import ensure_vllm_env

    def build() -> None:
        with contextlib.suppress(Exception):
            ensure_vllm_env()
            ensure_default_model()

    thread = threading.Thread(target=build, name="rner-prepare-servers", daemon=True)
    thread.start()
    return thread


def run_on_server(flow: "Flow[..., dict[str, Any]]", config: "Config", store: Store, port: int) -> None:
    """Run ``flow`` on ``config`` as a flow run on the local Prefect server (started and left running when none
    answers on ``port``), then print its outputs, its comparison table and the run's UI page."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from rich.markdown import Markdown

    url, _ = _server_env(port)
    prepare_servers_in_background(config)
    start_server(port, detach=True)
    with temporary_settings({PREFECT_API_URL: f"{url}/api"}):
        started = time.monotonic()
        state = flow(config, store=store.url, return_state=True)
        times = [*stage_times(state.state_details.flow_run_id), ("the flow run", "", time.monotonic() - started)]
    run_page = f"{url}/runs/flow-run/{state.state_details.flow_run_id}"
    if not state.is_completed():
        raise RnerError(f"the {flow.name} run ended {state.name}: see {run_page}")
    result = state.result()
    out.print("\n[bold]outputs[/]")
    for name, value in result.items():
        if name in ("store", "comparison"):
            continue
        for label, address in value.items() if isinstance(value, dict) else [("", value)]:
            out.print(f"  {f'{name} {label}'.strip():<24} {store.uri(address)}", soft_wrap=True, highlight=False)
    out.print("\n[bold]time per stage[/]")
    for name, ended, seconds in times:
        took = "-" if seconds is None else f"{int(seconds) // 60}:{int(seconds) % 60:02d}"
        out.print(f"  {name:<24} {took:>6}  {ended}", highlight=False)
    out.print("\n[bold]F1 per dataset (paper metric)[/]")
    out.print(Markdown(result["comparison"]))
    out.print(f"\n[bold]Prefect UI:[/] {run_page}\n(the server keeps running; `rner down` stops it)")


def stage_times(flow_run_id: "UUID") -> list[tuple[str, str, float | None]]:
    """Each task run of a flow run in the order they started: (task, final state, seconds it ran; None when it
    did not run, e.g. a cache hit). A stage's time includes the servers it started (CG's annotate: vLLM's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    times = []
    for run in sorted(runs, key=lambda r: r.expected_start_time or r.created):  # type: ignore[arg-type, return-value]
        ran = run.start_time is not None and run.end_time is not None
        seconds = (run.end_time - run.start_time).total_seconds() if ran else None  # type: ignore[operator]
        times.append((run.name.rsplit("-", 1)[0], run.state.name if run.state else "?", seconds))
    return times


def pipeline(
    preset: Annotated[str, typer.Option(help="Pipeline preset: smoke (CPU, embedded defaults) or paper.")] = "smoke",
    config: Annotated[Path | None, typer.Option(help="YAML PipelineConfig (instead of --preset).")] = None,
    store: StoreOption = None,
    port: PortOption = 4200,
) -> None:
    """Run the whole pipeline (CG → CT → RE → eval) as a Prefect flow run on a local server (started and
    left running when none answers on --port), then print the outputs, the F1 table and the run's UI page."""
    from flows.pipeline import pipeline as pipeline_flow
    from schemas import PipelineConfig
    from tasks.config import build_config, load_config

    if config is not None:
        loaded = load_config(PipelineConfig, config, preset=preset)
    else:
        loaded = build_config(PipelineConfig, {"preset": preset}, source=f"preset {preset}")
    target = Store(store) if store else Store.from_settings()
    if loaded.cg.input == DEMO_PASSAGES and not target.list(DEMO_PASSAGES):
        out.print(f"seeding the demo passages into {target.uri(DEMO_PASSAGES)}")
        seed_passages(target, DEMO_PASSAGES)
    if not loaded.sft.with_cot:
        out.print(
            "answers alone: this run trains and evaluates without reasoning (with_cot: false), the path that fits a "
            "CPU demo; reasoning chains take ~4x the tokens to train on and to generate. The method with reasoning: "
            '--config with sft, grpo and evaluate with_cot: true (README, "What `make demo` runs").',
            highlight=False,
        )
    run_on_server(pipeline_flow, loaded, target, port)


def recipe_run(
    name: Annotated[str, typer.Argument(help="The recipe (`rner recipe list`).")],
    smoke: Annotated[
        bool, typer.Option("--smoke", help="Its embedded-default variant: the demo corpus and model, on a CPU.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="YAML recipe config (default: recipes/NAME.yaml, the paper's values).")
    ] = None,
    store: StoreOption = None,
    port: PortOption = 4200,
) -> None:
    """Run one of the paper's experiments as a Prefect flow run on a local server (started and left running when
    none answers on --port), then print its outputs, its comparison table and the run's UI page."""
    from flows.deployments import recipe_parameters
    from flows.recipes import RECIPE_FLOWS

    loaded = recipe_parameters(name, config, smoke=smoke)
    run_on_server(RECIPE_FLOWS[name], loaded, Store(store) if store else Store.from_settings(), port)


def recipe_list() -> None:
    """The recipes: name, flow, config type, what it runs."""
    from flows.recipes import RECIPE_FLOWS
    from schemas import RECIPES

    for name, cls in RECIPES.items():
        flow = RECIPE_FLOWS[name]
        out.print(f"{name:<24} {flow.name:<22} {cls.__name__:<13} {flow.description}", soft_wrap=True, highlight=False)


def render_deployments() -> None:
    """Write deploy/prefect.yaml from flows/deployments.py (complete configs from the presets)."""
    from flows.deployments import write

    out.print(f"wrote {write()}")


def render_kubernetes(
    stage: Annotated[str, typer.Argument(help="The stage, e.g. sft, evaluate, annotate.")],
    config: Annotated[Path, typer.Option(help="The stage's YAML config (may start with `preset:`).")],
    backend: Annotated[Path | None, typer.Option(help="YAML KubernetesJob (namespace, gpus, volumes, ...).")] = None,
    store: Annotated[str | None, typer.Option(help="Store URL (default: RNER_STORE).")] = None,
) -> None:
    """Print the Job (or multi-node JobSet) that runs a stage, for `kubectl apply -f -`."""
    from flows.kubernetes_jobs import render
    from schemas.jobs import KubernetesJob
    from tasks.config import build_config, load_config

    spec = load_config(KubernetesJob, backend) if backend else build_config(KubernetesJob, {}, source="defaults")
    print(render(stage, config, spec, Store(store) if store else None), end="")


def render_kubernetes_server(
    model: Annotated[str, typer.Option(help="Hub id (every node downloads it) or a path on the cache claim.")],
    nodes: Annotated[int, typer.Option(min=1, help="Pods (nodes): vLLM's pipeline-parallel size.")] = 2,
    gpus_per_node: Annotated[int, typer.Option(min=1, help="GPUs per pod: vLLM's tensor-parallel size.")] = 8,
    max_model_len: Annotated[int, typer.Option(min=1, help="Longest sequence (prompt + completion).")] = 40960,
    name: Annotated[str | None, typer.Option(help="LeaderWorkerSet and Service name (default vllm-<model>).")] = None,
    served_name: Annotated[str | None, typer.Option(help="The model name clients ask for (default: --model).")] = None,
    gpu: Annotated[str, typer.Option(help="The nodes' GPU type, for the memory plan (tasks/memory_plan.py GPUS).")] = (
        "h100-80gb"
    ),
    api_key_secret: Annotated[
        str | None, typer.Option(help="Secret holding the API key (key RNER_TEACHER_API_KEY); '' for none.")
    ] = "rner-store",
    backend: Annotated[
        Path | None, typer.Option(help="YAML KubernetesJob (namespace, images, cache_claim, ...).")
    ] = None,
    extra_arg: Annotated[list[str] | None, typer.Option(help="More `vllm serve` arguments (repeatable).")] = None,
) -> None:
    """Print a multi-node vLLM server (LeaderWorkerSet + Service) for `kubectl apply -f -`, after its memory plan."""
    from flows.kubernetes_servers import MultiNodeServer, render_server
    from schemas.jobs import KubernetesJob
    from tasks.config import build_config, load_config

    spec = load_config(KubernetesJob, backend) if backend else build_config(KubernetesJob, {}, source="defaults")
    values = {"model": model, "nodes": nodes, "gpus_per_node": gpus_per_node, "max_model_len": max_model_len}
    values |= {"name": name, "served_name": served_name, "api_key_secret": api_key_secret or None}
    server = build_config(MultiNodeServer, {**values, "extra_args": extra_arg or []}, source="render-server options")
    print(render_server(server, spec, gpu), end="")


def render_kubernetes_service(
    model: Annotated[str, typer.Option(help="Model reference the pods serve (store:..., a hub id, a path).")],
    labels: Annotated[str, typer.Option(help='Entity types for requests that give none: "person,city".')] = "",
    gpus_per_pod: Annotated[int, typer.Option(min=1, help="GPUs per pod: vLLM's tensor-parallel size.")] = 1,
    max_model_len: Annotated[int, typer.Option(min=1, help="The model server's context window.")] = 32768,
    replicas: Annotated[int, typer.Option(min=1, help="Pods, each a whole model server.")] = 1,
    port: Annotated[int, typer.Option(min=1, max=65535, help="The service's port (pod and Service).")] = 8080,
    name: Annotated[str, typer.Option(help="ConfigMap, Deployment and Service name.")] = "rner-serve",
    token_secret: Annotated[
        str | None, typer.Option(help="Secret with the key RNER_SERVE_TOKEN (clients' bearer token).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="A ServeConfig YAML to start from (the options above win).")
    ] = None,
    backend: Annotated[
        Path | None, typer.Option(help="YAML KubernetesJob (namespace, images, cache_claim, env_secret, ...).")
    ] = None,
    store: Annotated[str | None, typer.Option(help="Store URL the pods resolve store: references in.")] = None,
) -> None:
    """Print the extraction service (ConfigMap + Deployment + Service) for `kubectl apply -f -`."""
    from flows.kubernetes_service import ServiceDeployment, render_service
    from schemas.jobs import KubernetesJob
    from schemas.service import ServeConfig
    from tasks.config import build_config, load_config
    from tasks.extract import clean_labels

    base = load_config(ServeConfig, config).model_dump(exclude_unset=True) if config else {}
    server = {**base.get("server", {}), "kind": "vllm", "model": model}
    server |= {"tensor_parallel_size": gpus_per_pod, "max_model_len": max_model_len}
    serve = {**base, "server": server, "port": port}
    if labels:
        serve["labels"] = clean_labels(labels.split(","))
    values = {"serve": serve, "name": name, "replicas": replicas, "token_secret": token_secret}
    spec = build_config(ServiceDeployment, values, source="render-service options")
    jobs = load_config(KubernetesJob, backend) if backend else build_config(KubernetesJob, {}, source="defaults")
    print(render_service(spec, jobs, Store(store) if store else None), end="")


def register(app: typer.Typer) -> None:
    """Add the orchestration commands to ``rner``."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("pipeline")(pipeline)
    recipe = typer.Typer(no_args_is_help=True, help="The paper's experiments (recipes/*.yaml), each a flow.")
    recipe.command("run")(recipe_run)
    recipe.command("list")(recipe_list)
    app.add_typer(recipe, name="recipe")
    images = typer.Typer(no_args_is_help=True, help="Container images of the stages and the orchestrator (images/).")
    images.command("build")(cli_build)
    images.command("lock")(cli_lock)
    images.command("wheelhouse")(cli_wheelhouse)
    app.add_typer(images, name="images")
    kubernetes = typer.Typer(no_args_is_help=True, help="Kubernetes manifests of stage jobs.")
    kubernetes.command("render")(render_kubernetes)
    kubernetes.command("render-server")(render_kubernetes_server)
    kubernetes.command("render-service")(render_kubernetes_service)
    app.add_typer(kubernetes, name="k8s")
    deploy = typer.Typer(no_args_is_help=True, help="Prefect deployments (deploy/prefect.yaml).")
    deploy.command("render")(render_deployments)
    app.add_typer(deploy, name="deploy")
