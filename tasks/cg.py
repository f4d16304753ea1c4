"""CoT generation end to end: annotate → validate → judge → publish, chained on one config.

Each step is the stage module of the same name, run with the previous step's output as its input, so
everything the steps do alone holds here too: finished steps are found and skipped, a failed step
resumes from its committed shards, and the request cache replays finished requests. When teacher and
judge are the same launch spec, one server serves both (started when first needed). After each step a line
on stderr gives its counts and its top reject reasons (``tasks.step_summary``).

Usage::

    rner cg run --config cg.yaml            # or: python -m tasks.cg --config cg.yaml
    rner cg run --config cg.yaml --preset smoke
"""

from __future__ import annotations

from functools import partial

from schemas import CGConfig, Endpoint
from tasks import annotate, judge, publish, validate
from tasks.llm_stage import Progress, shared_servers
from tasks.stage_cli import err, print_progress, stage_main
from tasks.step_summary import step_summary
from tasks.store import Published, Store


def run(
    config: CGConfig, store: Store, *, endpoint: Endpoint | None = None, progress: Progress | None = None
) -> Published:
    def report(step: str) -> Progress | None:
        return partial(print_progress, step=step) if progress is print_progress else progress

    def said(step: str, published: Published) -> Published:
        err.print(step_summary(step, published, store), highlight=False)
        return published

    with shared_servers():
        annotated = said("annotate", annotate.run(
            config.annotate.model_copy(update={"input": config.input}), store, endpoint=endpoint,
            progress=report("annotate"),
        ))  # fmt: skip
        valid = said("validate", validate.run(
            config.validation.model_copy(update={"input": annotated.manifest.address}), store,
            progress=report("validate"),
        ))  # fmt: skip
        judged = said("judge", judge.run(
            config.judge.model_copy(update={"input": valid.manifest.address}), store, endpoint=endpoint,
            progress=report("judge"),
        ))  # fmt: skip
    update = {"cot": valid.manifest.address, "verdicts": judged.manifest.address}
    return said("publish", publish.run(config.publish.model_copy(update=update), store, progress=report("publish")))


main = stage_main(CGConfig, run)

if __name__ == "__main__":
    main()
