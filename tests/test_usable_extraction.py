"""Extraction a person can use: generation that stops where the answer closes (in process and on a real vLLM
server), progress in logs as plain lines, the raw answer beside a parse error, charts embedded in artifacts,
and CG steps that say on the console why records fell out."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fault_server import FaultServer, ok, sequence
from rich.console import Console
from test_cg_run import seed

from schemas import CGConfig, Endpoint, SamplingParams
from tasks import cg
from tasks.extract import Extractor
from tasks.inline_images import inline_images
from tasks.llm import LLMClient, request_key
from tasks.progress import ProgressLines
from tasks.prompts import ANSWER_STOPS
from tasks.store import Store

STORY = [{"role": "user", "content": "Write a long story about a cat who lives in a lighthouse."}]
ANSWER = '{"entities": {"person": ["Ada Vex"], "location": []}}'


def test_stop_strings_leave_request_keys_of_plain_requests_alone() -> None:
    plain = SamplingParams(max_tokens=64)
    assert "stop" not in plain.model_dump(mode="json")
    assert request_key("m", STORY, plain) != request_key("m", STORY, SamplingParams(max_tokens=64, stop=["."]))
    # Both answer formats close with one of the stops, and neither holds one before its end.
    compact, indented = ANSWER, json.dumps(json.loads(ANSWER), indent=2)
    for answer in (compact, indented):
        first = min(i + len(s) for s in ANSWER_STOPS if (i := answer.find(s)) >= 0)
        assert first == len(answer)


@pytest.mark.slow
def test_in_process_generation_ends_at_the_first_stop_string(default_model: Path) -> None:
    from tasks.generate import LocalGenerator

    generator = LocalGenerator(str(default_model), batch_size=2)
    dog = [{"role": "user", "content": "Write a long story about a dog who lives on a farm."}]
    # One batch, with and without the stop: the same padding, so greedy decoding gives the same words until it.
    long = generator.complete([STORY, dog], SamplingParams(max_tokens=48))
    short = generator.complete([STORY, dog], SamplingParams(max_tokens=48, stop=["."]))
    for unstopped, stopped in zip(long, short, strict=True):
        assert stopped.text.endswith(".") and stopped.text.count(".") == 1, stopped.text
        # The same words, cut after the first sentence, which the story goes on past without the stop.
        assert unstopped.text.startswith(stopped.text) and len(unstopped.text) > len(stopped.text), unstopped.text
        assert stopped.finish_reason == "stop" and stopped.completion_tokens < unstopped.completion_tokens


@pytest.mark.slow
def test_a_vllm_server_stops_and_the_stop_string_is_put_back(vllm_endpoint: Endpoint) -> None:
    async def both() -> tuple[str, str, str | None]:
        async with LLMClient(vllm_endpoint, concurrency=2) as client:
            long, short = await asyncio.gather(
                client.chat(STORY, SamplingParams(max_tokens=48)),
                client.chat(STORY, SamplingParams(max_tokens=48, stop=["."])),
            )
        return long.text, short.text, short.finish_reason

    long, short, finish = asyncio.run(both())
    assert short.endswith(".") and short.count(".") == 1 and finish == "stop", short
    assert long.startswith(short) and len(long) > len(short), long


def test_extraction_asks_to_stop_at_the_answer_and_shows_what_the_model_wrote(default_model: Path) -> None:
    rambling = "Ada Vex is a person, I think, and there is more to say"
    with FaultServer(sequence(ok(answer=lambda prompt: rambling))) as fake:
        extractor = Extractor(fake.endpoint, tokenizer=str(default_model), context_tokens=400, max_tokens=16)
        [found] = extractor.extract(["Ada Vex met Bo Lind."], ["person"])
        [body] = fake.bodies.values()
    assert body["stop"] == list(ANSWER_STOPS)
    assert found.failures == (f"chunk [0, 20): no_json: no JSON object or array in the answer; the model wrote "
                              f"{rambling!r}",)  # fmt: skip
    assert found.prediction("t", raw=True).completion == rambling
    assert found.prediction("t").completion is None


def test_the_command_line_logs_progress_and_shows_the_raw_answer(default_model: Path, tmp_path: Path) -> None:
    with FaultServer(sequence(ok(answer=lambda prompt: "nothing here"))) as fake:
        options = ["--base-url", fake.endpoint.base_url, "--model", fake.endpoint.model, "--tokenizer",
                   str(default_model), "--context", "400", "--max-tokens", "16", "--labels", "person"]  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "tasks.extract", *options, "--text", "Ada Vex met Bo Lind.", "--show-raw"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Not a terminal: plain lines, the first before any answer is in.
    assert re.search(r"^extracting: 0/1, \d+ s\nextracting: 1/1, \d+ s$", result.stderr, re.MULTILINE), result.stderr
    line = json.loads(result.stdout)
    assert line["completion"] == "nothing here" and "the model wrote 'nothing here'" in line["parse_error"]


def test_progress_lines_are_throttled_and_end_with_the_total() -> None:
    out = io.StringIO()
    lines = ProgressLines("eval", every_s=3600, console=Console(file=out, width=200))
    for done in range(7):
        lines(done, 6)
    assert re.fullmatch(r"eval: 0/6, \d+ s\neval: 6/6, \d+ s\n", out.getvalue()), out.getvalue()


def test_relative_chart_links_are_embedded_and_others_left_alone() -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    files = {"chart/f1.png": png}
    markdown = "# r\n![F1](../chart/f1.png) ![web](https://x.org/a.png) ![gone](../chart/gone.png) [f](../chart/f1.png)"
    embedded = inline_images(markdown, "report/r.md", files.get)
    assert f"![F1](data:image/png;base64,{base64.b64encode(png).decode()})" in embedded
    assert "![web](https://x.org/a.png)" in embedded and "![gone](../chart/gone.png)" in embedded
    assert embedded.endswith("[f](../chart/f1.png)")  # a plain link stays a link


def test_cg_steps_say_on_the_console_why_records_fell_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "store")
    seed(store, 3)
    unreadable = "I cannot find any entities, sorry."
    with FaultServer(sequence(ok(answer=lambda prompt: unreadable))) as llm:
        server = llm.endpoint.model_dump(mode="json")
        config = CGConfig.preset("smoke", input="raw/passages", annotate={"teacher": server}, judge={"judge": server})
        cg.run(config, store)
    lines = {line.split(":")[0]: line for line in capsys.readouterr().err.splitlines() if ": " in line}
    assert lines["annotate"].startswith(f"annotate: 3 of 3 passages annotated; 3 answers unreadable: no_json 3 (e.g. "
                                        f"{unreadable!r})")  # fmt: skip
    assert lines["validate"].startswith("validate: 0 of 3 kept; rejected: parse_error 3")
    assert "(e.g. parse_error: no_json: " in lines["validate"]
    assert lines["judge"] == "judge: 0 judged"
    assert lines["publish"] == (
        "publish: v1: 0 new records kept (of 0 judged); 3 passages -> 3 annotated -> 0 valid -> 0 judged -> 0 kept"
        " — nothing kept: no annotation passed validation (parse_error 3, no_reasoning 3)"
    )


def test_rner_eval_logs_progress_lines_and_stops_at_the_answer(tmp_path: Path) -> None:
    eval_cli = [sys.executable, "-c", "import typer; from tasks.evaluate import cli_eval; typer.run(cli_eval)"]
    with FaultServer(sequence(ok(answer=lambda prompt: ANSWER))) as fake:
        config = tmp_path / "eval.yaml"
        config.write_text(json.dumps({"preset": "smoke", "model": fake.endpoint.model_dump(mode="json")}))
        result = subprocess.run([*eval_cli, "--config", str(config), "--store", str(tmp_path / "store")],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        bodies = list(fake.bodies.values())
    assert result.returncode == 0, result.stderr
    assert re.search(r"^generating: 0/(\d+), \d+ s\n(.*\n)*generating: \1/\1, \d+ s$", result.stderr, re.MULTILINE), (
        result.stderr
    )
    assert bodies and all(body["stop"] == list(ANSWER_STOPS) for body in bodies)


def test_the_cg_flow_logs_why_its_dataset_came_out_empty(prefect_server: None, tmp_path: Path) -> None:
    from prefect_runs import logs

    from flows.cg import cg as cg_flow

    store = Store(tmp_path / "store")
    seed(store, 2)
    with FaultServer(sequence(ok(answer=lambda prompt: "No idea."))) as llm:
        server = llm.endpoint.model_dump(mode="json")
        config = CGConfig.preset("smoke", input="raw/passages", annotate={"teacher": server}, judge={"judge": server})
        state = cg_flow(config, store=store.url, return_state=True)
    assert state.is_completed(), state
    lines = logs(state.state_details.flow_run_id)
    assert any(line.startswith("validate: 0 of 2 kept; rejected: parse_error 2") for line in lines), lines
    assert any(line.endswith("nothing kept: no annotation passed validation (parse_error 2, no_reasoning 2)")
               for line in lines), lines  # fmt: skip
