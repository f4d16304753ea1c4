"""``rner`` commands that need Prefect, added to the ``rner`` app as a plugin (entry point group
``rner.plugins``), so that ``tasks/`` never imports Prefect and ``rner`` still works without it.

    rner pipeline [--preset smoke] # the whole pipeline as a flow run on a local server (left running)
    rner down                      # stop that server
    rner up [--port 4200]          # local Prefect server + process worker, deployments registered
    rner deploy render             # regenerate deploy/prefect.yaml from flows/deployments.py
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from flows.deployments import PREFECT_FILE, PROCESS_POOL
from schemas import DEMO_PASSAGES
from tasks.demo import seed_passages
from tasks.errors import RnerError
from tasks.settings import Settings
from tasks.store import Store

REPO = Path(__file__).resolve().parent.parent
SERVER_DIR = Settings().home_dir / "prefect"
PortOption = Annotated[int, typer.Option(help="Port of the Prefect server and UI on 127.0.0.1.")]


out = Console()


def _prefect() -> str:
    return shutil.which("prefect") or str(Path(sys.executable).parent / "prefect")


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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
            server = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
        (SERVER_DIR / "server.pid").write_text(str(server.pid))
    else:  # its own session too: a Ctrl-C reaches `rner up` alone, which then stops the worker before the server
        server = subprocess.Popen(command, env=env, start_new_session=True)
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
    """Start a local Prefect server (UI on 127.0.0.1), register the deployments of deploy/prefect.yaml on a
    process work pool, and run a worker for it, until Ctrl-C."""
    from tasks.serving import raise_on_sigterm

    raise_on_sigterm()  # a SIGTERM stops the children too (they run in their own sessions)
    url, env = _server_env(port)
    children: list[subprocess.Popen[bytes]] = []
    try:
        if server := start_server(port, detach=False):
            children.append(server)
        pool = subprocess.run([_prefect(), "work-pool", "inspect", PROCESS_POOL], env=env, capture_output=True)
        if pool.returncode != 0:
            subprocess.run([_prefect(), "work-pool", "create", PROCESS_POOL, "--type", "process"], env=env, check=True)
        deploy = [_prefect(), "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)]
        subprocess.run(deploy, env=env, cwd=REPO, check=True)
        out.print(f"\n[bold]Prefect UI:[/] {url}   (deployments: {url}/deployments)")
        if not worker:
            return
        out.print(f"running a worker for pool {PROCESS_POOL}; Ctrl-C stops it and the server\n")
        worker_command = [_prefect(), "worker", "start", "--pool", PROCESS_POOL]
        children.append(subprocess.Popen(worker_command, env=env, cwd=REPO, start_new_session=True))
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


def pipeline(
    preset: Annotated[str, typer.Option(help="Pipeline preset: smoke (CPU, embedded defaults) or paper.")] = "smoke",
    config: Annotated[Path | None, typer.Option(help="YAML PipelineConfig (instead of --preset).")] = None,
    store: Annotated[str | None, typer.Option(help="Store URL (default: RNER_STORE).")] = None,
    port: PortOption = 4200,
) -> None:
    """Run the whole pipeline (CG → CT → RE → eval) as a Prefect flow run on a local server (started and
    left running when none answers on --port), then print the outputs, the F1 table and the run's UI page."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from rich.markdown import Markdown

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
    url, _ = _server_env(port)
    start_server(port, detach=True)
    with temporary_settings({PREFECT_API_URL: f"{url}/api"}):
        state = pipeline_flow(loaded, store=target.url, return_state=True)
    run_page = f"{url}/runs/flow-run/{state.state_details.flow_run_id}"
    if not state.is_completed():
        raise RnerError(f"the pipeline run ended {state.name}: see {run_page}")
    result = state.result()
    out.print("\n[bold]outputs[/]")
    for name, address in result.items():
        if name not in ("store", "comparison"):
            out.print(f"  {name:<14} {target.uri(address)}", soft_wrap=True, highlight=False)
    out.print("\n[bold]zero-shot F1 (paper metric)[/]")
    out.print(Markdown(result["comparison"]))
    out.print(f"\n[bold]Prefect UI:[/] {run_page}\n(the server keeps running; `rner down` stops it)")


def render_deployments() -> None:
    """Write deploy/prefect.yaml from flows/deployments.py (complete configs from the presets)."""
    from flows.deployments import write

    out.print(f"wrote {write()}")


def register(app: typer.Typer) -> None:
    """Add the orchestration commands to ``rner``."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("pipeline")(pipeline)
    deploy = typer.Typer(no_args_is_help=True, help="Prefect deployments (deploy/prefect.yaml).")
    deploy.command("render")(render_deployments)
    app.add_typer(deploy, name="deploy")
