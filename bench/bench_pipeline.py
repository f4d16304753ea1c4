"""The pipeline through Prefect vs the same stage command lines run one after another, and the cost of a retry.

    python bench/bench_pipeline.py [--preset smoke]

On one machine, in one run, each into its own fresh store (nothing cached):

1. plain: the stage CLIs in sequence, each given the previous one's output the way the flow chains them
   (``tasks.cg``, ``tasks.mix``, ``tasks.launch sft``, ``tasks.sample``, ``tasks.launch grpo``,
   ``tasks.evaluate`` for the CT and the RE model);
2. Prefect: the ``pipeline`` flow on a local Prefect server with its eval set missing, so it fails in its last
   stage; the eval set is then written and the same flow run retried. Its time is both attempts together
   (what a user waits for, the failed attempt included), so the ratio errs against Prefect.

Prints the wall seconds of each, the ratio Prefect / plain (goal ≤ 1.05), and the retry: its seconds (the
recomputation: only the evaluations) against the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from side_by_side import describe_machine

from schemas import DEMO_PASSAGES, MixConfig, NERExample, PipelineConfig
from tasks.demo import load_demo, seed_passages
from tasks.jsonl import dump_jsonl
from tasks.models import STORE_SCHEME
from tasks.serving import free_port
from tasks.store import Store


def stage(store: Store, *module: str, config: object) -> str:
    """Run one stage command line; the address it published."""
    command = [sys.executable, "-m", *module, "--config-json", config.model_dump_json(), "--store", store.url]  # type: ignore[attr-defined]
    result = subprocess.run(command, stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(result.stdout.splitlines()[-1])["address"]


def plain(config: PipelineConfig, store: Store) -> float:
    start = time.perf_counter()
    cot = stage(store, "tasks.cg", config=config.cg)
    data = stage(store, "tasks.mix", config=MixConfig(sources=(cot, *config.extra_cot), on_duplicate="first"))
    ct = stage(store, "tasks.launch", "sft", config=config.sft.model_copy(update={"dataset": data}))
    sample = stage(store, "tasks.sample", config=config.sample)
    grpo = config.grpo.model_copy(update={"dataset": sample, "model": STORE_SCHEME + ct})
    re = stage(store, "tasks.launch", "grpo", config=grpo)
    for model in (ct, re):
        generator = config.evaluate.model.model_copy(update={"model": STORE_SCHEME + model})
        stage(store, "tasks.evaluate", config=config.evaluate.model_copy(update={"model": generator}))
    return time.perf_counter() - start


def through_prefect(config: PipelineConfig, store: Store, eval_set: Path) -> tuple[float, float]:
    """(seconds of the whole run, failed attempt and retry together; seconds of the retry)."""
    from prefect_runs import retry  # tests/: the same retry the UI's Retry button makes

    from flows.pipeline import pipeline

    start = time.perf_counter()
    failed = pipeline(config, store=store.url, return_state=True)
    assert failed.is_failed(), failed
    eval_set.write_bytes(dump_jsonl(load_demo("test"), NERExample, str(eval_set)))
    retried_at = time.perf_counter()
    state = retry(pipeline, failed.state_details.flow_run_id)
    assert state.is_completed(), state
    end = time.perf_counter()
    return end - start, end - retried_at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="smoke")
    args = parser.parse_args()
    describe_machine()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from flows.cli import start_server, stop_process

    with tempfile.TemporaryDirectory() as tmp:
        eval_set = Path(tmp) / "eval.jsonl"
        config = PipelineConfig.preset(args.preset, evaluate={"datasets": [str(eval_set)]})
        stores = {name: Store(Path(tmp) / name) for name in ("plain", "prefect")}
        for store in stores.values():
            seed_passages(store, DEMO_PASSAGES)
        eval_set.write_bytes(dump_jsonl(load_demo("test"), NERExample, str(eval_set)))
        plain_s = plain(config, stores["plain"])
        eval_set.unlink()
        port = free_port()
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        server = start_server(port, detach=False)
        try:
            prefect_s, retry_s = through_prefect(config, stores["prefect"], eval_set)
        finally:
            if server is not None:
                stop_process(server)
    print(f"\npreset {args.preset}")
    print(f"{'stage CLIs in sequence':<40} {plain_s:>8.1f} s")
    print(f"{'pipeline flow (failed + retried)':<40} {prefect_s:>8.1f} s   ratio {prefect_s / plain_s:.3f}")
    print(f"{'retry after the last stage failed':<40} {retry_s:>8.1f} s   {100 * retry_s / prefect_s:.0f}% of the run")


if __name__ == "__main__":
    main()
