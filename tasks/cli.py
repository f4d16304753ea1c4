"""``rner``: the command line.

    rner model default                          # provision the embedded model, print its directory
    rner score --gold G.jsonl --pred P.jsonl    # paper-metric F1 per dataset (--mode strict, --json)
    rner schemas export DIR                     # JSON Schema of every contract
    rner config show sft --preset paper         # a complete stage config to start from (--fields: what each means)
    rner config diff --preset paper --against grpo.yaml   # where a config departs from a preset
    rner data demo                              # demo passages into the store as raw CG input
    rner cg run --config cg.yaml                # CoT generation; also cg annotate|validate|judge|publish
    rner data import --config import.yaml       # labelled NER data (JSONL, InstructUIE, CoNLL, hub) into the store
    rner data sample --config sample.yaml       # RE data: a stratified sample of labelled NER sets
    rner data mix --config mix.yaml             # several CoT datasets into one training set
    rner train sft --config sft.yaml            # CT; `rner train grpo` for RE (N processes x M nodes)
    rner train plan grpo --config grpo.yaml     # per-GPU memory of training and its servers (--gpu, --json)
    rner eval --config eval.yaml                # zero-shot F1 report on eval sets
    rner report ADDRESS=LABEL …                 # one table comparing models across datasets (+ a chart)
    rner extract --labels person,city --text …  # entities with character offsets
    rner serve --model M --labels person,city   # the same over HTTP (POST /v1/extract), in front of vLLM

Known failures (bad files, bad configs, unreachable store, missing model) print one clear message and
exit with status 1; a traceback means a bug.
"""

from __future__ import annotations

import inspect
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

import schemas
from schemas import DEMO_PASSAGES, EXPORTED, STAGE_CONFIGS, Config, EvalConfig, PipelineConfig
from tasks.config import ABSENT, build_config, diff_configs, dump_config, field_docs, load_config, stage_of
from tasks.evaluate import cli_eval
from tasks.extract import cli_extract
from tasks.launch import train_command
from tasks.memory_plan import cli_plan
from tasks.models import ensure_default_model
from tasks.report import cli_report
from tasks.score import report_table, score_files
from tasks.serve_cli import cli_serve
from tasks.stage_cli import check_writable, clean_errors, config_help, stage_command
from tasks.store import Store

COMMAND_ORDER = ("pipeline", "up", "down", "config", "data", "cg", "train", "eval", "extract", "report", "recipe")
"""How ``rner --help`` lists the commands: the whole method on one line first, then the stages in the order they
run; the rest (``score``, ``model``, ``schemas``, images, deployments) after, as registered. Plugin commands
(``pipeline``, ``up``, ``recipe``) are registered last, so the order cannot be left to registration."""


class _Ordered(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    cls=_Ordered, no_args_is_help=True, add_completion=False, help="Reasoning NER: data, training, evaluation."
)
schemas_app = typer.Typer(no_args_is_help=True, help="The Pydantic contracts between stages.")
model_app = typer.Typer(no_args_is_help=True, help="Models: the embedded default and model references.")
config_app = typer.Typer(no_args_is_help=True, help="Stage configs: presets, validation.")
app.add_typer(schemas_app, name="schemas")
app.add_typer(model_app, name="model")
cg_app = typer.Typer(no_args_is_help=True, help="CoT generation: annotate → validate → judge → publish.")
data_app = typer.Typer(no_args_is_help=True, help="Data in the store.")
app.add_typer(config_app, name="config")
app.add_typer(cg_app, name="cg")
app.add_typer(data_app, name="data")

StoreOption = Annotated[str | None, typer.Option(help="Store URL (default: RNER_STORE).")]


def _stage(app_: typer.Typer, name: str, module: str, config_cls: str) -> None:
    """Register ``rner <group> <name>``: the stage module's own command line, imported only when run."""

    def command(**options: Any) -> None:
        import importlib

        stage = importlib.import_module(module)
        stage_command(getattr(schemas, config_cls), stage.run)(**options)

    command.__signature__ = inspect.signature(stage_command(Config, lambda *a, **k: None))  # type: ignore[attr-defined]
    command.__doc__ = f"Run the {name} stage (same as ``python -m {module}``)."
    app_.command(name, epilog=config_help(getattr(schemas, config_cls)))(command)


for _name, _module, _cls in (
    ("annotate", "tasks.annotate", "AnnotateConfig"),
    ("validate", "tasks.validate", "ValidateConfig"),
    ("judge", "tasks.judge", "JudgeConfig"),
    ("publish", "tasks.publish", "PublishConfig"),
    ("run", "tasks.cg", "CGConfig"),
):
    _stage(cg_app, _name, _module, _cls)
_stage(data_app, "sample", "tasks.sample", "SampleConfig")
_stage(data_app, "import", "tasks.data_import", "ImportConfig")
_stage(data_app, "mix", "tasks.mix", "MixConfig")


train_app = typer.Typer(no_args_is_help=True, help="Training: CoT SFT (CT) and GRPO (RE), on N processes x M nodes.")
app.add_typer(train_app, name="train")
for _name in ("sft", "grpo"):
    train_app.command(_name, epilog=config_help(STAGE_CONFIGS[_name]))(train_command(_name))
train_app.command("plan")(cli_plan)
app.command("eval", epilog=config_help(EvalConfig))(cli_eval)
app.command("extract")(cli_extract)
app.command("serve")(cli_serve)
app.command("report")(cli_report)


@data_app.command("demo")
def data_demo(
    prefix: Annotated[str, typer.Option(help="Where in the store the raw passage files go.")] = DEMO_PASSAGES,
    store: StoreOption = None,
) -> None:
    """Put the demo corpus's training passages (without their gold entities) into the store as raw input."""
    from tasks.demo import seed_passages

    target = Store(store) if store else Store.from_settings()
    for path in seed_passages(target, prefix):
        print(target.uri(path))


out = Console()


@schemas_app.command("export")
def schemas_export(directory: Path) -> None:
    """Write ``<Model>.schema.json`` for every record, manifest and stage config."""
    check_writable(directory, "DIRECTORY", folder=True)
    directory.mkdir(parents=True, exist_ok=True)
    for name, model in sorted(EXPORTED.items()):
        (directory / f"{name}.schema.json").write_text(json.dumps(model.model_json_schema(), indent=2) + "\n")
    out.print(f"wrote {len(EXPORTED)} schemas to {directory}", markup=False)


@config_app.command("show")
def config_show(
    stage: Annotated[str, typer.Argument(help=f"One of: {', '.join(STAGE_CONFIGS)}.")],
    preset: Annotated[str | None, typer.Option(help="Start from this preset (paper, paper-1.7b, smoke).")] = None,
    file: Annotated[Path | None, typer.Option(help="A YAML config to validate and complete.")] = None,
    fields: Annotated[bool, typer.Option("--fields", help="Print what each field means instead of a config.")] = False,
) -> None:
    """Print a complete, validated stage config as YAML (a preset, a file, or both), or with ``--fields`` every
    field (nested ones dotted) and its help text."""
    if stage not in STAGE_CONFIGS:
        raise typer.BadParameter(f"must be one of {', '.join(STAGE_CONFIGS)}", param_hint="STAGE")
    cls = STAGE_CONFIGS[stage]
    if fields:
        for name, doc in field_docs(cls):
            print(f"{name}: {' '.join(doc.split())}")
        return
    if file:
        config = load_config(cls, file, preset=preset)
    else:
        config = build_config(cls, {"preset": preset} if preset else {}, source=f"{stage} defaults")
    print(dump_config(config), end="")


DIFFABLE: dict[str, type[Config]] = {**STAGE_CONFIGS, "pipeline": PipelineConfig}


@config_app.command("diff")
def config_diff(
    preset: Annotated[str, typer.Option(help="The preset to compare with (paper, paper-1.7b, smoke).")],
    against: Annotated[Path, typer.Option(help="A YAML config (it may start from a preset itself).")],
    stage: Annotated[
        str | None, typer.Option(help=f"Whose config the file is: {', '.join(DIFFABLE)} (default: told by its fields).")
    ] = None,
) -> None:
    """Every field where a config file (as it would run: its own preset, if any, and the defaults filled in)
    differs from a preset: one line per field, its name, the preset's value and the file's."""
    if stage is not None and stage not in DIFFABLE:
        raise typer.BadParameter(f"must be one of {', '.join(DIFFABLE)}", param_hint="--stage")
    stage = stage or stage_of(against, DIFFABLE)
    cls = DIFFABLE[stage]
    base = build_config(cls, {"preset": preset}, source=f"{stage} preset {preset!r}")
    differences = diff_configs(base, load_config(cls, against))
    rows = [(name, _shown(mine), _shown(theirs)) for name, mine, theirs in differences]
    header = ("field", f"preset {preset}", str(against))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(2)]
    for row in [header, *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip())
    err = Console(stderr=True)
    err.print(f"{stage}: {len(rows)} field(s) of {against} differ from preset {preset}", highlight=False, markup=False)


def _shown(value: Any) -> str:
    """A value as one line: strings as they are, ``-`` for a field the config does not have, the rest as JSON."""
    if value is ABSENT:
        return "-"
    return value if isinstance(value, str) and value.strip() == value and value else json.dumps(value)


@model_app.command("default")
def model_default() -> None:
    """Provision the embedded default model (SmolLM2-135M-Instruct) and print its directory."""
    path = ensure_default_model()
    print(path)


@app.command()
def score(
    gold: Annotated[Path, typer.Option(help="NERExample JSONL (the dataset is each example's `source`).")],
    pred: Annotated[Path, typer.Option(help="Prediction JSONL: `id` and `entities` or a raw `completion`.")],
    mode: Annotated[str, typer.Option(help="paper (normalized text+label sets) or strict (exact spans).")] = "paper",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Micro P/R/F1 per dataset and the unweighted average over datasets."""
    if mode not in ("paper", "strict"):
        raise typer.BadParameter("must be 'paper' or 'strict'", param_hint="--mode")
    report = score_files(gold, pred, mode)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(report_table(report))


def _plugins() -> None:
    """Commands other packages add to ``rner`` (``flows.cli``: ``rner up``, ...), when they can load."""
    for entry_point in entry_points(group="rner.plugins"):
        try:
            entry_point.load()(app)
        except ImportError as e:  # e.g. Prefect is not installed in a stage image
            app.info.epilog = f"(commands of {entry_point.value} are unavailable: {e})"


def main() -> None:
    _plugins()
    with clean_errors():
        app()


if __name__ == "__main__":
    main()
