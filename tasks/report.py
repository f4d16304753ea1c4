"""The comparison report: F1 per dataset, one row per model, from evaluation outputs, as the paper's tables read.

Rows are evaluations (``evaluate`` outputs), each with a label (a model, a recipe's row); columns are the
datasets in the order they first appear, then the average: each evaluation's own unweighted average over its
datasets, as its metrics say. Values are span-level micro F1 in %, paper mode unless ``mode`` is strict; a
dataset a row was not evaluated on is ``-``. The chart has one group of bars per dataset and the average,
one bar per row.

Recipes and the pipeline publish their table as a ``metrics`` output, ``reports/report/<hash>``: the table as
markdown (role ``report``), the chart (``chart``), the numbers as JSON (``metrics``); its config names the
rows and its inputs are the evaluations, so ``rner report <its address>`` renders it again, in strict mode or
next to other evaluations.

Usage::

    rner report evals/evaluate/1a2b…=CT evals/evaluate/3c4d…=RE --out report/   # prints the table; files in report/
    rner report reports/report/5e6f… --mode strict                               # a published report's rows
    published = publish(ReportConfig(title="zero-shot F1", evals={"CT": address, "RE": other}), store)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer

from schemas import ReportConfig, config_hash, output_address
from tasks.errors import RnerError
from tasks.eval_report import percent, png
from tasks.stage_cli import check_writable
from tasks.store import Published, Store

Mode = Literal["paper", "strict"]
CHART_FILE = "report.png"


class ReportError(RnerError, ValueError):
    """Outputs that cannot be compared: not evaluations, or rows that cannot be told apart."""


@dataclass(frozen=True)
class Row:
    label: str
    address: str
    """The evaluation output the row comes from."""
    f1: dict[str, float]
    """Dataset → F1 in [0, 1]."""
    average: float
    examples: int | None = None
    """Examples the evaluation generated for (``None``: an evaluation that did not record it)."""
    parse_failures: int | None = None
    """Of them, answers that did not parse."""


SAME_WITHIN = 0.01
"""Two rows whose averages differ by less than this (1 F1 point) are called the same in the notes."""


@dataclass(frozen=True)
class Comparison:
    mode: Mode
    rows: tuple[Row, ...]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(name for row in self.rows for name in row.f1))

    def markdown(self) -> str:
        """The table: ``| model | <datasets> | average |``, one line per row."""
        datasets = self.datasets
        lines = [_line(["model", *datasets, "average"]), "|---|" + "---:|" * (len(datasets) + 1)]
        for row in self.rows:
            cells = [percent(row.f1[name])[0] if name in row.f1 else "-" for name in datasets]
            lines.append(_line([row.label, *cells, *percent(row.average)]))
        return "\n".join(lines) + "\n"

    def notes(self) -> list[str]:
        """What the table alone does not say, in words: why a row is 0 everywhere, and which rows do not differ
        from the row above them (at small scale a stage often changes nothing measurable)."""
        notes = []
        for above, row in zip((None, *self.rows), self.rows, strict=False):
            if not any(row.f1.values()):
                notes.append(f"{row.label}: F1 0 on every dataset; {_why_zero(row)}.")
            elif above is not None and abs(row.average - above.average) < SAME_WITHIN:
                change = f"{100 * (row.average - above.average):+.1f}"
                notes.append(f"{row.label}: within 1 F1 point of {above.label} ({change}), no measurable change.")
        return notes

    def chart(self, title: str) -> bytes:
        """A PNG: one group of horizontal bars per dataset and the average, one bar per row."""
        from matplotlib.figure import Figure

        groups = [*self.datasets, "average"]
        height = 0.8 / len(self.rows)
        figure = Figure(figsize=(8, 1.6 + 0.22 * len(groups) * len(self.rows)), dpi=100)
        axes = figure.add_subplot()
        for i, row in enumerate(self.rows):
            values = {**row.f1, "average": row.average}
            at = [g + i * height for g, name in enumerate(groups) if name in values]
            axes.barh(at, [100 * values[name] for name in groups if name in values], height=height, label=row.label)
        axes.set_yticks([g + 0.4 - height / 2 for g in range(len(groups))], labels=groups)
        axes.invert_yaxis()  # first dataset on top, like the table
        axes.set_xlim(0, 100)
        axes.set_xlabel(f"F1 (%, {self.mode} mode)")
        axes.set_title(title)
        axes.legend(loc="best", fontsize=8)
        return png(figure)

    def document(self, title: str, chart: str) -> str:
        """The report as markdown: title, table, what the numbers are, the chart (a path relative to the file)."""
        sources = "; ".join(f"{r.label}: `{r.address}`" for r in self.rows)
        note = (f"F1 is span-level micro F1 in %, {self.mode} mode; the average is each row's unweighted average over "
                f"the datasets it was evaluated on. Evaluations: {sources}.")  # fmt: skip
        said = "".join(f"- {line}\n" for line in self.notes())
        return f"# {title}\n\n{self.markdown()}\n{said + chr(10) if said else ''}{note}\n\n![{title}]({chart})\n"


def _why_zero(row: Row) -> str:
    if row.parse_failures is None or row.examples is None:
        return "its evaluation did not record how many answers parsed"
    if row.parse_failures == row.examples:
        return f"none of its {row.examples} answers parsed (it did not answer in the form asked for)"
    if row.parse_failures:
        return f"{row.parse_failures} of {row.examples} answers did not parse, the others found no gold entity"
    return f"all {row.examples} answers parsed but found no gold entity"


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def evaluation(store: Store, address: str) -> Published:
    """The evaluation output at ``address``, refused unless it is one (an ``evaluate`` output with metrics)."""
    published = store.load(address)
    manifest = published.manifest
    if manifest.stage != "evaluate" or len(manifest.files_with("metrics")) != 1:
        raise ReportError(
            f"{address} is a {manifest.kind!r} output of stage {manifest.stage!r}, not an evaluation (`rner eval`) "
            "or a report"
        )
    return published


def row(label: str, published: Published, store: Store, mode: Mode = "paper") -> Row:
    """One evaluation's F1 per dataset and average, as its metrics file has them."""
    [entry] = published.manifest.files_with("metrics")
    metrics = json.loads(store.read_file(published.manifest.address, entry))[mode]
    f1 = {name: scores["f1"] for name, scores in metrics["per_dataset"].items()}
    stats = published.manifest.stats
    return Row(
        label, published.manifest.address, f1, metrics["average_f1"], stats.get("examples"), stats.get("parse_failures")
    )


def compare(evals: Mapping[str, Published], store: Store, mode: Mode = "paper") -> Comparison:
    """Label → evaluation output, as a comparison (rows in the mapping's order)."""
    return Comparison(mode, tuple(row(label, published, store, mode) for label, published in evals.items()))


def resolve(items: Sequence[str], store: Store) -> dict[str, Published]:
    """``ADDRESS[=LABEL]`` arguments as labelled evaluations; a report's address stands for its rows. An
    evaluation without a label is labelled with its model reference."""
    evals: dict[str, Published] = {}
    for item in items:
        address, _, label = item.partition("=")
        published = store.load(address)
        if published.manifest.stage == "report":
            if label:
                raise ReportError(f"{item}: a report stands for its own rows, which have labels; label evaluations")
            rows = {name: evaluation(store, a) for name, a in published.manifest.config["evals"].items()}  # type: ignore[union-attr]
        else:
            found = evaluation(store, address)
            rows = {label or str(found.manifest.config["model"]["model"]): found}  # type: ignore[index]
        for name, found in rows.items():
            if name in evals:
                raise ReportError(f"two rows are labelled {name!r}: give each evaluation its own (ADDRESS=LABEL)")
            evals[name] = found
    return evals


def publish(config: ReportConfig, store: Store) -> Published:
    """The comparison of ``config.evals`` as a ``metrics`` output; the same evaluations and labels find the one
    published before."""
    evals = {label: evaluation(store, address) for label, address in config.evals.items()}
    refs = [published.ref for published in evals.values()]
    out = store.output(output_address("report", config_hash(config), [r.digest for r in refs], prefix="reports"))
    if (published := out.published()) is not None:
        return published
    comparison = compare(evals, store, config.mode)
    chart = out.put_file("chart", comparison.chart(config.title), role="chart", suffix=".png")
    numbers = {"mode": config.mode, "datasets": comparison.datasets, "rows": [asdict(r) for r in comparison.rows]}
    files = [
        out.put_file("report", comparison.document(config.title, f"../{chart.path}").encode(), role="report",
                     suffix=".md"),
        chart,
        out.put_file("comparison", json.dumps(numbers, indent=2).encode(), role="metrics", suffix=".json"),
    ]  # fmt: skip
    stats = {"rows": len(comparison.rows), "datasets": len(comparison.datasets),
             "average_f1": {r.label: r.average for r in comparison.rows}}  # fmt: skip
    return out.publish(kind="metrics", stage="report", config=config, files=files, inputs=refs, stats=stats)


def cli_report(
    outputs: Annotated[
        list[str], typer.Argument(help="Evaluation outputs as ADDRESS[=LABEL] (one row each), or a report's address.")
    ],
    out: Annotated[
        Path | None, typer.Option(help=f"Also write the report (report.md) and its chart ({CHART_FILE}) here.")
    ] = None,
    mode: Annotated[str, typer.Option(help="paper (normalized text+label sets) or strict (exact spans).")] = "paper",
    title: Annotated[str, typer.Option(help="The report's title.")] = "F1 per dataset",
    store: Annotated[str | None, typer.Option(help="Store URL (default: RNER_STORE).")] = None,
) -> None:
    """Compare models across datasets: F1 per dataset and the average, one row per evaluation."""
    if mode not in ("paper", "strict"):
        raise typer.BadParameter("must be 'paper' or 'strict'", param_hint="--mode")
    if out is not None:
        check_writable(out, "--out", folder=True)
    target = Store(store) if store else Store.from_settings()
    comparison = compare(resolve(outputs, target), target, mode)  # type: ignore[arg-type]
    print(comparison.markdown(), end="")
    for line in comparison.notes():
        print(line)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / CHART_FILE).write_bytes(comparison.chart(title))
        (out / "report.md").write_text(comparison.document(title, CHART_FILE))
