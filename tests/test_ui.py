"""The Prefect UI, for real: a served deployment triggered through the UI's own run form in headless Chromium.

A real ``prefect server start`` on 127.0.0.1, the CG flow served with ``flow.serve`` (its stage jobs
talk to the scripted teacher/judge of tests/fault_server.py running in this test process), and
Playwright driving Debian's Chromium: Deployments → the deployment → Run → Custom run → change a
parameter → Submit → the flow run page turns Completed → the Artifacts tab lists the stage artifacts. The same
form shows each config field's docstring as its help text.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fault_server import FaultServer, ok, sequence
from test_cg_run import seed, teacher_or_judge

from schemas import CGConfig, PublishConfig
from tasks.store import Store

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--no-first-run",
]  # fmt: skip
SERVE = """
import json, sys
from flows.cg import cg
params = json.loads(sys.argv[1])
cg.serve(name="cg-ui", parameters=params)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def prefect_ui(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A real Prefect server with its UI on 127.0.0.1; yields the UI's URL and the env to reach its API."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_UI_API_URL": f"{url}/api",
           "PREFECT_API_URL": f"{url}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    prefect = shutil.which("prefect") or str(Path(sys.executable).parent / "prefect")
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 120
    while not _healthy(f"{url}/api/health"):
        if server.poll() is not None or time.monotonic() > deadline:
            _stop(server)
            pytest.fail(f"prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, env
    _stop(server)
    log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for_deployment(api: str, name: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}).json()
        if found:
            return
        time.sleep(1)
    raise AssertionError(f"deployment {name} was never registered")


@contextmanager
def served_cg(url: str, env: dict[str, str], params: dict[str, Any], log: Path) -> Iterator[None]:
    """The CG flow served as deployment ``cg-ui`` with ``params``, registered before the block starts."""
    with open(log, "wb") as out:
        serve = subprocess.Popen([sys.executable, "-c", SERVE, json.dumps(params)], env=env, stdout=out, stderr=out,
                                 cwd=Path(__file__).parent.parent)  # fmt: skip
        try:
            _wait_for_deployment(f"{url}/api", "cg-ui")
            yield
        finally:
            _stop(serve)


def open_custom_run(page: Any, url: str) -> None:
    """Deployments → ``cg-ui`` → Run → Custom run: the form generated from the flow's parameter schema."""
    page.goto(f"{url}/deployments")
    page.get_by_role("link", name="cg-ui").first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").first.click()


def form_property(page: Any, label: str) -> Any:
    """The form's (innermost) property labelled ``label``."""
    title = page.locator("span.schema-form-property__label", has_text=label)
    return page.locator("div.schema-form-property", has=title).last


def test_run_a_deployment_from_the_ui_with_custom_parameters(
    prefect_ui: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, env = prefect_ui
    store = Store(tmp_path / "store")
    seed(store, 4)
    with FaultServer(sequence(ok(answer=teacher_or_judge))) as llm:
        server = llm.endpoint.model_dump(mode="json")
        config = CGConfig.preset("smoke", input="raw/passages", annotate={"teacher": server}, judge={"judge": server})
        params = {"config": config.model_dump(mode="json"), "store": store.url}
        with served_cg(url, env, params, tmp_path / "serve.log"), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            open_custom_run(page, url)
            # The form is generated from CGConfig's JSON Schema: set publish.min_score to 9.
            form_property(page, "Min Score").locator("input[type=number]").fill("9")
            page.get_by_role("button", name="Submit").click()
            page.locator(".toast-flow-run-create__button").last.click()
            badge = page.locator("header.page-heading-flow-run .state-badge")
            expect(badge).to_have_class(__import__("re").compile(r"state--completed"), timeout=240_000)
            page.get_by_text("Artifacts", exact=True).first.click()
            expect(page.get_by_text("publish-card").first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("annotate-stats").first).to_be_visible()
            page.screenshot(path=str(tmp_path / "flow-run.png"), full_page=True)
            browser.close()
    assert (tmp_path / "flow-run.png").stat().st_size > 10_000
    runs = httpx.post(f"{url}/api/flow_runs/filter", json={}).json()
    [run] = [r for r in runs if r["state_type"] == "COMPLETED"]
    assert run["parameters"]["config"]["publish"]["min_score"] == 9  # the value typed into the form
    published = store.load("datasets/ner-cot/v1").manifest
    assert published.config["min_score"] == 9


def test_the_run_form_shows_each_fields_help_text(prefect_ui: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """A field's docstring reaches the deployment's run form (config → JSON schema → Prefect's parameter schema)."""
    from playwright.sync_api import expect, sync_playwright

    url, env = prefect_ui
    help_text = PublishConfig.model_fields["min_score"].description
    assert help_text
    params = {"config": CGConfig.preset("smoke", input="raw/passages").model_dump(mode="json"), "store": str(tmp_path)}
    with served_cg(url, env, params, tmp_path / "serve.log"), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        open_custom_run(page, url)
        expect(form_property(page, "Min Score").get_by_text(help_text)).to_be_visible(timeout=30_000)
        page.screenshot(path=str(tmp_path / "run-form.png"), full_page=True)
        browser.close()


SHOW_REPORT = """
import sys
from prefect import flow
from flows.chain import publish_report
from tasks.store import Store

@flow(name="report-ui")
def show(store: str, ct: str, re: str) -> None:
    target = Store(store)
    publish_report("pipeline", "Zero-shot F1: CT vs RE", {"CT": target.load(ct), "RE": target.load(re)}, target)

show(*sys.argv[1:])
"""


def test_the_pipeline_reports_chart_loads_in_the_ui(prefect_ui: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """The pipeline's comparison report artifact shows its F1 chart: the image loads (natural width > 0)."""
    from playwright.sync_api import expect, sync_playwright

    from schemas import EvalConfig
    from tasks import evaluate

    url, env = prefect_ui
    store = Store(tmp_path / "store")
    with FaultServer(sequence(ok(answer=lambda prompt: '{"entities": {}}'))) as llm:
        model = {"kind": "endpoint", **llm.endpoint.model_dump(mode="json")}
        evals = [
            evaluate.run(EvalConfig.model_validate({"model": model, "datasets": ["demo:test"], "max_examples": n}),
                         store).manifest.address
            for n in (2, 3)
        ]  # fmt: skip
    subprocess.run([sys.executable, "-c", SHOW_REPORT, store.url, *evals], env=env, check=True, timeout=300,
                   cwd=Path(__file__).parent.parent)  # fmt: skip
    [artifact] = httpx.post(f"{url}/api/artifacts/filter", json={"artifacts": {"key": {"any_": ["pipeline-report"]}}}
                            ).json()  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/artifacts/artifact/{artifact['id']}")
        chart = page.get_by_role("img", name="Zero-shot F1: CT vs RE")
        expect(chart).to_be_visible(timeout=60_000)
        page.wait_for_function("img => img.complete", arg=chart.element_handle(), timeout=30_000)
        width = chart.evaluate("img => img.naturalWidth")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert width > 0, f"the chart did not load: {(tmp_path / 'report.png')}"
