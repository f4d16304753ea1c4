"""``rner`` commands that need Prefect, added to the ``rner`` app as a plugin (entry point group
``rner.plugins``), so that ``tasks/`` never imports Prefect and ``rner`` still works without it.

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
from tasks.errors import RnerError

REPO = Path(__file__).resolve().parent.parent


out = Console()


def _prefect() -> str:
    return shutil.which("prefect") or str(Path(sys.executable).parent / "prefect")


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def up(
    port: Annotated[int, typer.Option(help="Port of the Prefect server and UI on 127.0.0.1.")] = 4200,
    worker: Annotated[bool, typer.Option(help="Also run a process worker for the rner-process pool.")] = True,
) -> None:
    """Start a local Prefect server (UI on 127.0.0.1), register the deployments of deploy/prefect.yaml on a
    process work pool, and run a worker for it, until Ctrl-C."""
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api, "RNER_REPO": str(REPO)}
    children: list[subprocess.Popen[bytes]] = []
    try:
        if not _healthy(api):
            out.print(f"starting the Prefect server on {url} ...")
            server = [_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            children.append(subprocess.Popen(server, env=env))
            deadline = time.monotonic() + 120
            while not _healthy(api):
                if children[0].poll() is not None or time.monotonic() > deadline:
                    raise RnerError(f"the Prefect server did not start on {url}")
                time.sleep(0.5)
        pool = subprocess.run([_prefect(), "work-pool", "inspect", PROCESS_POOL], env=env, capture_output=True)
        if pool.returncode != 0:
            subprocess.run([_prefect(), "work-pool", "create", PROCESS_POOL, "--type", "process"], env=env, check=True)
        deploy = [_prefect(), "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)]
        subprocess.run(deploy, env=env, cwd=REPO, check=True)
        out.print(f"\n[bold]Prefect UI:[/] {url}   (deployments: {url}/deployments)")
        if not worker:
            return
        out.print(f"running a worker for pool {PROCESS_POOL}; Ctrl-C stops it and the server\n")
        children.append(subprocess.Popen([_prefect(), "worker", "start", "--pool", PROCESS_POOL], env=env, cwd=REPO))
        children[-1].wait()
    except KeyboardInterrupt:
        pass
    finally:
        # A worker talking to a server that is gone hangs on shutdown: stop the worker first.
        for child in reversed(children):
            _stop(child)


def render_deployments() -> None:
    """Write deploy/prefect.yaml from flows/deployments.py (complete configs from the presets)."""
    from flows.deployments import write

    out.print(f"wrote {write()}")


def register(app: typer.Typer) -> None:
    """Add the orchestration commands to ``rner``."""
    app.command("up")(up)
    deploy = typer.Typer(no_args_is_help=True, help="Prefect deployments (deploy/prefect.yaml).")
    deploy.command("render")(render_deployments)
    app.add_typer(deploy, name="deploy")
