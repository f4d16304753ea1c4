"""Bad input to every ``rner`` command: a non-zero exit, one clear line naming the file/field/option, no
traceback, nothing published.

``CASES`` holds the bad inputs of each command (its path, e.g. ``"cg annotate"``); ``test_every_command_has_cases``
fails when a command is added without any. A case's arguments may name the files of ``BAD`` as ``{name}``
(``{dir}`` a directory, ``{missing}`` no file at all, ...) and must make the command fail *before* it does any
model, network or image work: a case that got that far is slow and fails on the message it expects. The cases
run in-process through the real entry point's error handling (``tasks.cli.main``); a few run as real
subprocesses, and hypothesis feeds the config loader arbitrary bytes and nested YAML.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from schemas import EvalConfig
from tasks.cli import _plugins, app
from tasks.config import ConfigError, load_config
from tasks.jsonl import BOM
from tasks.stage_cli import clean_errors

_plugins()

DEEP = "a: " + "[" * 1000 + "]" * 1000 + "\n"
HUGE = "9" * 5000
SURROGATE = "\udcff"
"""What a non-UTF-8 byte in a command-line argument becomes in Python (``surrogateescape``)."""

BAD: dict[str, bytes | None] = {
    "dir": None,  # a directory: made by the fixture
    "empty.yaml": b"",
    "comments.yaml": b"# nothing but a comment\n",
    "bom.yaml": BOM + b"no_such_field: 1\n",
    "latin1.yaml": b"preset: caf\xe9\n",
    "deep.yaml": DEEP.encode(),
    "huge.yaml": f"schema_version: {HUGE}\n".encode(),
    "unknown.yaml": b"no_such_field: 1\n",
    "listing.yaml": b"- 1\n- 2\n",
    "empty.jsonl": b"",
    "latin1.jsonl": b'{"id": "a", "text": "caf\xe9"}\n',
    "deep.jsonl": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "huge.jsonl": f'{{"id": "a", "text": "x", "entities": [], "labels": ["x"], "source": "s", "n": {HUGE}}}\n'.encode(),
    "unknown.jsonl": b'{"id": "a", "text": "x", "no_such_field": 1}\n',
    "bom.jsonl": BOM + b'{"id": "a", "text": "x", "no_such_field": 1}\n',
    "surrogate.jsonl": b'{"id": "a", "text": "\\ud800 alone"}\n',
    "latin1.txt": b"caf\xe9\n",
    "empty.txt": b"",
}
"""Files every case may name: ``{dir}``, ``{missing}`` (never written) and these, by name without suffix for the
YAML ones (``{empty}``, ``{deep}``, ...) and with it for the others (``{empty.jsonl}``)."""


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    """The command line after ``rner``; ``{name}`` is a file of ``BAD`` (or one of ``files``)."""
    names: str
    """What the error line must contain: the file, field or option at fault."""
    files: tuple[tuple[str, str], ...] = ()
    """More files for this case: (name, text)."""


def config_cases(*command: str, option: str = "--config") -> list[Case]:
    """Every bad YAML file given as ``option`` of ``command``."""
    return [
        Case((*command, option, "{dir}"), "dir"),
        Case((*command, option, "{missing}"), "missing.yaml"),
        Case((*command, option, "{empty}"), "empty.yaml"),
        Case((*command, option, "{comments}"), "comments.yaml"),
        Case((*command, option, "{bom}"), "no_such_field"),
        Case((*command, option, "{latin1}"), "latin1.yaml"),
        Case((*command, option, "{deep}"), "deep.yaml"),
        Case((*command, option, "{huge}"), "huge.yaml"),
        Case((*command, option, "{unknown}"), "no_such_field"),
        Case((*command, option, "{listing}"), "listing.yaml"),
    ]


def jsonl_cases(*command: str) -> list[Case]:
    """Every bad JSONL file given as the last option of ``command``."""
    return [
        Case((*command, "{dir}"), "dir"),
        Case((*command, "{missing}"), "missing"),
        Case((*command, "{empty.jsonl}"), "empty.jsonl"),
        Case((*command, "{latin1.jsonl}"), "latin1.jsonl:1"),
        Case((*command, "{deep.jsonl}"), "deep.jsonl:1"),
        Case((*command, "{huge.jsonl}"), "huge.jsonl:1"),
        Case((*command, "{unknown.jsonl}"), "unknown.jsonl:1"),
        Case((*command, "{bom.jsonl}"), "no_such_field: Extra inputs"),  # not "invalid JSON": the BOM is dropped
        Case((*command, "{surrogate.jsonl}"), "surrogate.jsonl:1"),
    ]


def field_case(*command: str, field: str, value: str, names: str = "") -> Case:
    """``command`` with a YAML file whose ``field`` (dotted: nested) is ``value``; the error names the field."""
    *outer, last = field.split(".")
    text = "".join(f"{'  ' * i}{name}:\n" for i, name in enumerate(outer)) + f"{'  ' * len(outer)}{last}: {value}\n"
    return Case((*command, "--config", "{field.yaml}"), names or last, files=(("field.yaml", text),))


def stage_cases(*command: str, field: str, value: str = "-4") -> list[Case]:
    """A stage's command line (``tasks.stage_cli``): bad files, bad inline JSON, a bad ``field`` value."""
    return [
        *config_cases(*command),
        field_case(*command, field=field, value=value),
        field_case(*command, field=field, value=HUGE, names=f"field.yaml:{field.count('.') + 1}: an integer of 5000"),
        Case((*command, "--config-json", "[" * 1000 + "]" * 1000), "--config-json"),
        Case((*command, "--config-json", f'{{"schema_version": {HUGE}}}'), "--config-json"),
        Case((*command, "--config-json", "{no json"), "--config-json"),
        Case((*command, "--preset", "smoke", "--config-json", "[1]"), "--config-json"),
        Case((*command, "--config-json", json.dumps({field.split(".")[0]: -4})), field.split(".")[0]),
        Case((*command, "--config", "{unknown}", "--config-json", "{}"), "--config-json"),
        Case((*command, "--preset", "no-such-preset", "--config-json", "{}"), "no-such-preset"),
    ]


IMPORT_EMPTY = "dataset: d\nformat: jsonl\nsplits: [test]\npath: {empty.jsonl}\n"
SAMPLE_IDS = "sources: ['demo:train']\n"
SCORE_GOLD = '{"id": "a", "text": "Ada", "labels": ["person"], "entities": [], "source": "s"}\n'

CASES: dict[str, list[Case]] = {
    "cg annotate": stage_cases("cg", "annotate", field="concurrency"),
    "cg validate": stage_cases("cg", "validate", field="max_entities", value="0"),
    "cg judge": stage_cases("cg", "judge", field="concurrency"),
    "cg publish": stage_cases("cg", "publish", field="min_score", value="-1"),
    "cg run": stage_cases("cg", "run", field="annotate.concurrency"),
    "data sample": [
        *stage_cases("data", "sample", field="total", value="0"),
        *(
            Case(("data", "sample", "--config", "{ids.yaml}"), names, files=(("ids.yaml", SAMPLE_IDS + ids),))
            for ids, names in [
                ("ids: [a, b, a]\n", "ids: each id once; repeated: ['a']"),
                ("ids: [a]\ntotal: 2\n", "total 2 and 1 ids"),
                ("ids: [news-train-01, nope]\n", "ids: 1 not in the train split of demo-food"),
            ]
        ),
    ],
    "data import": [
        *stage_cases("data", "import", field="count", value="-1"),
        Case(("data", "import", "--config", "{import.yaml}"), "empty.jsonl", files=(("import.yaml", IMPORT_EMPTY),)),
    ],
    "data mix": stage_cases("data", "mix", field="seed", value="[1]"),
    "train sft": stage_cases("train", "sft", field="global_batch_size", value="0"),
    "train grpo": stage_cases("train", "grpo", field="num_generations", value="-1"),
    "data demo": [Case(("data", "demo", "--store", "{empty.txt}"), "empty.txt")],
    "eval": [
        *config_cases("eval"),
        field_case("eval", field="concurrency", value="-1"),
        field_case("eval", field="max_examples", value="0"),
        field_case("eval", field="reasoning_budget", value="-1"),
        field_case("eval", field="concurrency", value=HUGE, names="field.yaml:1: an integer of 5000"),
        Case(("eval", "--config", "{unknown}", "--preset", "no-such-preset"), "no-such-preset"),
        Case(("eval", "--config", "[/bold].yaml"), "[/bold].yaml"),  # printed as it is, not as terminal markup
    ],
    "extract": [
        *jsonl_cases("extract", "--labels", "person", "--input"),
        Case(("extract", "--labels", "person", "--input", "{empty.txt}"), "empty.txt"),
        Case(("extract", "--labels", "person", "--input", "{latin1.txt}"), "latin1.txt:1"),
        Case(("extract", "--labels", "person", "--input", "{latin1}"), "latin1.yaml"),
        Case(("extract", "--labels", "person", "--text", "Ada", "--output", "{dir}"), "dir"),
        Case(("extract", "--labels", "person", "--text", "Ada", "--output", "{empty.txt}/x.jsonl"), "empty.txt"),
        Case(
            ("extract", "--labels", "person", "--text", f"Ada {SURROGATE}"), "argument 5 ('Ada \\udcff') is not UTF-8"
        ),
        Case(("extract", "--labels", f"person{SURROGATE}", "--text", "Ada"), "argument 3"),
        Case(("extract", "--labels", "x" * 600, "--text", "Ada"), "at most 512"),
        Case(("extract", "--labels", " , ", "--text", "Ada"), "entity types"),
        Case(("extract", "--labels", "person", "--text", "Ada", "--concurrency", "-1"), "--concurrency"),
        Case(("extract", "--labels", "person", "--text", "Ada", "--concurrency", "0"), "--concurrency"),
        Case(("extract", "--labels", "person", "--text", "Ada", "--max-tokens", "0"), "--max-tokens"),
        Case(("extract", "--labels", "person", "--text", "Ada", "--context", "-5"), "--context"),
        Case(("extract", "--labels", "person", "--text", "Ada", "--context", HUGE), "--context"),
        Case(("extract", "--labels", "person", "--text", "Ada", "--prompt", "nope"), "nope"),
        Case(("extract", "--labels", "person", "--text", "Ada", "--reasoning-budget", "-1"), "reasoning_budget"),
        Case(
            ("extract", "--labels", "person", "--text", "Ada", "--reasoning-budget", "8", "--answer-only"), "with_cot"
        ),
        Case(("extract", "--labels", "person"), "--text"),
        *config_cases("extract", "--labels", "person", "--text", "Ada", option="--definitions")[:4],
        Case(
            ("extract", "--labels", "person", "--text", "Ada", "--definitions", "{types.yaml}"),
            "'city'",
            (("types.yaml", "person: a named human\ncity: a town\n"),),
        ),
        Case(
            ("extract", "--labels", "person", "--text", "Ada", "--definitions", "{types.yaml}"),
            "'person'",
            (("types.yaml", "person: '  '\n"),),
        ),
        Case(
            ("extract", "--labels", "person", "--text", "Ada", "--definitions", "{types.yaml}"),
            "'person'",
            (("types.yaml", "person: |\n  a named\n  human\n"),),
        ),
        Case(
            ("extract", "--labels", "person", "--text", "Ada", "--prompt", "paper", "--definitions", "{types.yaml}"),
            "--definitions",
            (("types.yaml", "person: a named human\n"),),
        ),
    ],
    "report": [
        Case(("report", "evals/none"), "evals/none"),
        Case(("report", "evals/none", "--out", "{empty.txt}"), "empty.txt"),
        Case(("report", "evals/none", "--mode", "loose"), "--mode"),
        Case(("report", "evals/none", "--store", "{empty.txt}"), "empty.txt"),
    ],
    "score": [
        *jsonl_cases("score", "--pred", "{gold.jsonl}", "--gold"),
        *jsonl_cases("score", "--gold", "{gold.jsonl}", "--pred"),
        Case(("score", "--gold", "{gold.jsonl}", "--pred", "{gold.jsonl}", "--mode", "loose"), "--mode"),
    ],
    "up": [Case(("up", "--port", "-1"), "--port"), Case(("up", "--port", HUGE), "--port")],
    "down": [Case(("down", "now"), "now")],
    "pipeline": [
        *config_cases("pipeline"),
        Case(("pipeline", "--preset", "no-such-preset"), "no-such-preset"),
        Case(("pipeline", "--port", "0"), "--port"),
        Case(("pipeline", "--port", "70000"), "--port"),
    ],
    "schemas export": [Case(("schemas", "export", "{empty.txt}"), "empty.txt")],
    "model default": [Case(("model", "default", "now"), "now")],
    "config show": [
        *config_cases("config", "show", "sft", option="--file"),
        Case(("config", "show", "nope"), "STAGE"),
        Case(("config", "show", "sft", "--preset", "no-such-preset"), "no-such-preset"),
    ],
    "config diff": [
        *config_cases("config", "diff", "--preset", "paper", "--stage", "sft", option="--against"),
        *config_cases("config", "diff", "--preset", "paper", option="--against")[:3],
        Case(("config", "diff", "--preset", "paper", "--against", "{unknown}", "--stage", "nope"), "--stage"),
    ],
    "train plan": [
        *config_cases("train", "plan", "sft"),
        Case(("train", "plan", "nope"), "STAGE"),
        Case(("train", "plan", "sft", "--config", "{sft.yaml}", "--gpu", "nope"), "nope"),
    ],
    "recipe run": [*config_cases("recipe", "run", "ablation"), Case(("recipe", "run", "nope"), "nope")],
    "recipe list": [Case(("recipe", "list", "now"), "now")],
    "images build": [
        Case(("images", "build", "--role", "nope"), "nope"),
        Case(("images", "build", "--role", "vllm", "--accelerator", "nope"), "nope"),
    ],
    "images lock": [Case(("images", "lock", "--variant", "nope", "--check"), "nope")],
    "images wheelhouse": [
        Case(("images", "wheelhouse", "--role", "nope", "--output", "{dir}"), "nope"),
        Case(
            ("images", "wheelhouse", "--role", "vllm", "--accelerator", "cpu", "--output", "{empty.txt}"), "empty.txt"
        ),
    ],
    "k8s render": [
        *config_cases("k8s", "render", "sft"),
        *config_cases("k8s", "render", "sft", "--config", "{sft.yaml}", option="--backend"),
        Case(("k8s", "render", "nope", "--config", "{sft.yaml}"), "nope"),
    ],
    "k8s render-server": [
        *config_cases("k8s", "render-server", "--model", "m", option="--backend"),
        Case(("k8s", "render-server", "--model", "m", "--nodes", "0"), "--nodes"),
        Case(("k8s", "render-server", "--model", "m", "--max-model-len", HUGE), "--max-model-len"),
    ],
    "k8s render-service": [
        *config_cases("k8s", "render-service", "--model", "m"),
        *config_cases("k8s", "render-service", "--model", "m", option="--backend")[:3],
        Case(("k8s", "render-service", "--model", "m", "--replicas", "0"), "--replicas"),
        Case(("k8s", "render-service", "--model", "m", "--labels", "x" * 600), "at most 512"),
        Case(("k8s", "render-service", "--model", "m", "--name", ""), "name"),
    ],
    "serve": [
        *config_cases("serve"),
        Case(("serve", "--port", "-1"), "port"),
        Case(("serve", "--concurrency", "0"), "concurrency"),
        Case(("serve", "--max-queue", "-1"), "max_queue"),
        Case(("serve", "--backend", "nope"), "--backend"),
        Case(("serve", "--labels", "x" * 600), "at most 512"),
        Case(("serve", "--context", HUGE), "--context"),
    ],
    "deploy render": [Case(("deploy", "render", "now"), "now")],
}


def commands() -> list[str]:
    """Every command of ``rner`` (its plugins included), as its path: ``"cg annotate"``."""

    def walk(command: object, path: tuple[str, ...]) -> list[str]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            return [" ".join(path)]
        return [name for key, sub in subcommands.items() for name in walk(sub, (*path, key))]

    return walk(typer.main.get_command(app), ())


def test_every_command_has_cases() -> None:
    missing = sorted(set(commands()) - set(CASES))
    assert not missing, f"commands without bad-input cases in {__file__}: {missing}"
    assert not set(CASES) - set(commands()), "cases for commands that do not exist"


@pytest.fixture
def bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The files of ``BAD`` in a directory, with a home, a store and a hub cache of their own there."""
    for name, data in BAD.items():
        if data is None:
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_bytes(data)
    (tmp_path / "gold.jsonl").write_text(SCORE_GOLD)
    (tmp_path / "sft.yaml").write_text("preset: smoke\ndataset: datasets/ner-cot/v1\n")
    monkeypatch.setenv("RNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RNER_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


PLACEHOLDER = re.compile(r"\{([\w.]+)\}")


def filled(text: str, where: Path) -> str:
    """``text`` with each ``{name}`` of a file in ``where`` (or ``{missing}``) replaced by its path."""
    known = {"missing": "missing.yaml"} | {n.removesuffix(".yaml"): n for n in BAD} | {n: n for n in os.listdir(where)}
    return PLACEHOLDER.sub(lambda m: str(where / known[m[1]]) if m[1] in known else m[0], text)


def snapshot(root: Path) -> set[tuple[str, int]]:
    return {(str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def invoke(args: list[str]) -> tuple[int, str, str]:
    """``rner ARGS`` as ``tasks.cli.main`` runs it: (exit status, stdout, stderr); a traceback lands in stderr."""
    runner = CliRunner()
    argv = sys.argv
    with runner.isolation() as (stdout, stderr, _):
        code = 0
        sys.argv = ["rner", *args]
        try:
            with clean_errors():
                app(prog_name="rner")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # the point: whatever escapes is a traceback the user would see
            sys.stderr.write(traceback.format_exc())
            code = -1
        finally:
            sys.argv = argv
        sys.stdout.flush()
        sys.stderr.flush()
        return code, stdout.getvalue().decode(errors="replace"), stderr.getvalue().decode(errors="replace")


def check(code: int, out: str, err: str, names: str) -> None:
    """The invariants of a refused input (see the module docs)."""
    shown = out + err
    assert "Traceback" not in shown, shown
    assert code in (1, 2), f"exit status {code}: {shown}"
    if code == 1:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert names in lines[0], f"{names!r} not in {lines[0]!r}"
    else:  # a usage error, in typer's box: its message may be wrapped
        flat = " ".join(line.strip(" │╭╮╰╯─") for line in shown.splitlines())
        assert names in flat.replace("  ", " ") or names in shown, shown


ALL = [pytest.param(command, i, id=f"{command}-{i}") for command, cases in CASES.items() for i in range(len(cases))]


@pytest.mark.parametrize(("command", "index"), ALL)
def test_bad_input_is_refused_cleanly(command: str, index: int, bad: Path) -> None:
    case = CASES[command][index]
    for name, text in case.files:
        (bad / name).write_text(filled(text, bad))
    store = bad / "store"
    store.mkdir()
    before = snapshot(bad)
    start = time.monotonic()
    code, out, err = invoke([filled(arg, bad) for arg in case.args])
    check(code, out, err, case.names)
    assert snapshot(bad) == before, "a refused command wrote files"
    assert time.monotonic() - start < 20, "refused too late: after slow work"


# --- the real entry point, in subprocesses --------------------------------------------------------------------


def test_the_entry_point_refuses_bad_input_in_one_line(bad: Path) -> None:
    """Through ``rner`` itself: argument bytes that are not UTF-8 (Python's lone surrogates), a deep config, an
    output that is a directory; one line each, no traceback, nothing published."""
    rner = [sys.executable, "-m", "tasks.cli"]
    (bad / "store").mkdir()
    before = snapshot(bad)
    runs = {
        "argument 5": [*rner, "extract", "--labels", "person", "--text", os.fsencode(f"Ada {SURROGATE}")],
        "deep.yaml:1": [*rner, "eval", "--config", str(bad / "deep.yaml")],
        "huge.yaml": [*rner, "data", "import", "--config", str(bad / "huge.yaml")],
        f"--output {bad / 'dir'}": [
            *rner,
            "extract",
            "--labels",
            "person",
            "--text",
            "Ada",
            "--output",
            str(bad / "dir"),
        ],
    }
    for names, command in runs.items():
        done = subprocess.run(command, capture_output=True, timeout=120, env=os.environ)
        check(done.returncode, done.stdout.decode(), done.stderr.decode(), names)
    assert snapshot(bad) == before


# --- config loading, fuzzed ------------------------------------------------------------------------------------


def load_or_refuse(data: bytes) -> None:
    """``data`` as an ``EvalConfig`` file: a config or a ``ConfigError``, within the time bound of the caller."""
    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "config.yaml"
        path.write_bytes(data)
        try:
            load_config(EvalConfig, path)
        except ConfigError as e:  # clean_errors prints it as one line
            assert str(path) in str(e)


FUZZ = settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
"""A 5-second bound per case (cases take milliseconds; the machine may be busy with other tests)."""


@FUZZ
@given(st.binary(max_size=4000), st.booleans())
def test_any_bytes_are_a_config_or_a_clean_error(data: bytes, bom: bool) -> None:
    load_or_refuse(b"\xef\xbb\xbf" * bom + data)


@FUZZ
@given(st.lists(st.sampled_from(["[", "{a: ", "a:\n", "- ", "!!seq [", "&x ["]), min_size=1, max_size=2000))
def test_nested_yaml_of_any_depth_is_a_config_or_a_clean_error(openers: list[str]) -> None:
    text, indent = "", 0
    for opener in openers:  # block openers indent what follows; flow ones nest in brackets
        text += " " * indent + opener if opener.endswith("\n") or opener == "- " else opener
        indent += 2 * (opener in ("a:\n", "- "))
    load_or_refuse(text.encode())


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.just(HUGE),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)


@settings(FUZZ, max_examples=100)
@given(st.dictionaries(st.sampled_from([*EvalConfig.model_fields, "preset", "x"]) | st.text(), JSONISH, max_size=6))
def test_any_fields_are_a_config_or_a_clean_error(fields: dict[str, object]) -> None:
    # JSON is YAML: strings with lone surrogates arrive as "\ud800" escapes; HUGE as a 5,000-digit integer.
    load_or_refuse(json.dumps(fields).replace(f'"{HUGE}"', HUGE).encode())


# --- data import: byte-order marks, control characters, Unicode spaces, long labels ------------------------------


def import_config(where: Path, format: str, path: Path, splits: str = "[test]") -> str:
    config = where / "import.yaml"
    config.write_text(f"dataset: d\nformat: {format}\nsplits: {splits}\npath: {path}\n")
    return str(config)


def test_import_reads_a_bom_as_a_signature_and_refuses_control_characters(bad: Path) -> None:
    """A byte-order mark starts every kind of file as a signature; no-break spaces in a CoNLL token are plain spaces
    (README, Data import); a control character in a token and a type longer than any name are errors at file:line."""
    from tasks.store import Store

    folder = bad / "Travel"
    folder.mkdir()
    (folder / "labels.json").write_bytes(BOM + json.dumps(["city"]).encode())
    (folder / "test.json").write_bytes(BOM + json.dumps([{"sentence": "To Turin.", "entities": []}]).encode())
    code, _, err = invoke(["data", "import", "--config", import_config(bad, "instructuie", folder)])
    assert code == 0, err
    conll = bad / "test.conll"
    conll.write_bytes(BOM + "New\u00a0York B-city\nis O\n\nbig O\n".encode())
    code, _, err = invoke(["data", "import", "--config", import_config(bad, "conll", conll)])
    assert code == 0, err
    store = Store(bad / "store")
    [first, _] = store.records(store.find("datasets/d/v2").manifest, role="test")  # type: ignore[union-attr]
    assert first.text == "New York is" and first.entities[0].text == "New York"  # type: ignore[attr-defined]
    before = snapshot(bad / "store")
    for text, names in (
        ("Turin B-city\nis\x1b O\n", "test.conll:2: token 'is\\x1b' holds a control character (U+001B)"),
        ("Turin O\nis\rnice O\n", "test.conll:2: token 'is\\rnice'"),
        (f"Turin B-{'x' * 600}\n", "test.conll:1: label: String should have at most 512 characters"),
        ("", "no examples in the test split"),
    ):
        conll.write_text(text)
        check(*invoke(["data", "import", "--config", import_config(bad, "conll", conll)]), names)
    assert snapshot(bad / "store") == before


def test_a_bom_starts_gold_and_predictions_as_a_signature(bad: Path) -> None:
    (bad / "bom-gold.jsonl").write_bytes(BOM + SCORE_GOLD.encode())
    (bad / "bom-pred.jsonl").write_bytes(BOM + b'{"id": "a", "entities": []}\n')
    code, out, err = invoke(["score", "--gold", str(bad / "bom-gold.jsonl"), "--pred", str(bad / "bom-pred.jsonl")])
    assert code == 0 and "micro" in out, err
