"""What the training stages (``tasks.sft``, ``tasks.grpo``) share: inputs, hardware checks, checkpoints in the
store, and the published model.

A training stage runs in every process of a torchrun job (``tasks.launch`` starts it); each process calls
the stage's ``run`` with the same config. The pieces here keep those processes in step:

- Inputs. ``load_dataset`` reads the dataset's manifest and refuses another kind with a clear error;
  ``backbone`` resolves the model reference (``store:<address>`` against the run's own store, and then
  part of the lineage).
- Hardware. ``check_hardware`` lists every GPU option the machine cannot honour (bf16 on a GPU without
  it, Liger, FlashAttention-2, DeepSpeed; vLLM rollouts in GRPO) and refuses to start: none is dropped
  silently, since each changes the experiment.
- Memory. ``tasks.memory_plan.check_memory`` plans the run's per-GPU memory from the model's config (before the
  model loads) and refuses a config that cannot fit the GPU, naming the field to change (``rner train plan``).
- Lengths. ``screen`` applies ``too_long`` to examples over the token limit: dropped, kept for the trainer
  to cut, or an error. The count is logged and goes into the manifest.
- Arguments. ``training_arguments`` turns the config into the trainer's ``TrainingArguments`` values, a pure
  function of the config and a ``Device`` (the stages' ``sft_arguments``/``grpo_arguments`` add their own), so
  the trainer configs of every preset are built and checked on a CPU (tests/test_trainer_config.py).
- Checkpoints. Every ``save_steps`` the trainer's checkpoint is uploaded to
  ``<address>/_checkpoints/checkpoint-<step>/`` (by one process per node: ZeRO-3 writes per-rank files on
  each node's own disk), then ``_checkpoints/checkpoint-<step>.json`` lists its files and the world size
  (processes) that wrote it: a checkpoint without its list is incomplete and ignored. With ``resume: true``
  (the default), a run at an address that has checkpoints downloads the newest into every node's work
  directory and the trainer continues from it: step counter, optimizer and scheduler state, RNG states, data
  position. ``parallel`` is not part of the address, but a checkpoint resumes only with the world size that
  wrote it (ZeRO-3 shards the optimizer state per process; the data position and RNG states are per process
  too): any other is refused (``check_world_size``). A run that ``save_steps`` would never checkpoint (fewer
  steps, by the trainer's own count) is warned about when training starts (``check_save_steps``).
- Output. The final model is saved as a HF directory under ``<address>/model/`` (files of role ``model``;
  ``store:<address>`` loads it anywhere), with the training curve (PNG) and the trainer's log history
  (JSON) as ``report`` files, and a ``model`` manifest: base model, dataset digest, config, final metrics.

Work directories live under ``$RNER_HOME/runs/<address>``: shared by the processes of a node, one per node
(so ``RNER_HOME`` must be on a node's own disk, not on a filesystem that several nodes share).

Usage (a stage's ``run``, in every process)::

    training = TrainingRun.open(config, store, stage="sft", kinds=("cot",), prefix="models/ct", settings=settings)
    if training.published:                              # finished before: nothing to do
        return training.published
    args = trl.SFTConfig(**training.arguments(), ...)   # sets up the processes' communication
    training.fetch_checkpoint()
    dataset = training.dataset(build_row, count_row_tokens, limit, config.too_long, "prompt + target")
    return training.train(trl.SFTTrainer, args=args, train_dataset=dataset, ..., progress=progress, curves=[...])
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from datasets import Dataset
from pydantic import BaseModel, ConfigDict, ValidationError
from transformers import TrainerCallback

from schemas import FileEntry, InputRef, TrainConfig, config_hash, output_address
from schemas.jobs import WORK_DIR
from tasks.errors import RnerError
from tasks.jsonl import describe
from tasks.memory_plan import check_memory
from tasks.models import MODEL_PREFIX, STORE_SCHEME, resolve_model
from tasks.settings import Settings
from tasks.store import AlreadyPublished, Output, Published, Store

CHECKPOINTS = "_checkpoints"
_CHECKPOINT_LIST = re.compile(rf"/{CHECKPOINTS}/checkpoint-(\d+)\.json$")

T = TypeVar("T")
Progress = Callable[[int, int], None]
"""Called with (steps done, steps total) as training goes."""

_log = logging.getLogger("rner.train")


class TrainError(RnerError, ValueError):
    """A training run that cannot start: wrong dataset, hardware that lacks an option, too-long examples."""


# --- inputs ------------------------------------------------------------------------------------------


def load_dataset(store: Store, address: str, kinds: Sequence[str], *, stage: str) -> Published:
    """The published dataset at ``address``, refused unless its kind is one of ``kinds``."""
    source = store.load(address)
    if source.manifest.kind not in kinds:
        wanted = " or ".join(repr(k) for k in kinds)
        raise TrainError(
            f"{address} is a {source.manifest.kind!r} output; {stage} trains on a {wanted} dataset (see `dataset`)"
        )
    return source


@dataclass(frozen=True)
class Backbone:
    """The model a run starts from: a loadable path, and the published output it came from, if any."""

    path: str
    ref: InputRef | None


def backbone(ref: str, store: Store, settings: Settings) -> Backbone:
    """Resolve a model reference; ``store:<address>`` is looked up in ``store`` (the run's own)."""
    if not ref.startswith(STORE_SCHEME):
        return Backbone(resolve_model(ref, settings), None)
    published = store.load(ref.removeprefix(STORE_SCHEME))
    return Backbone(resolve_model(ref, settings.model_copy(update={"store": store.url})), published.ref)


# --- hardware ----------------------------------------------------------------------------------------


OPTIONAL_PACKAGES = {"deepspeed": "gpu", "liger_kernel": "gpu", "flash_attn": "gpu", "vllm": "vllm"}
"""The packages GPU options need, and the extra of this project that installs each."""


@dataclass(frozen=True)
class Device:
    """What a machine offers the GPU options: a CUDA device (with bf16? which compute capability?) and
    which optional packages are installed."""

    cuda: bool
    bf16: bool = False
    capability: tuple[int, int] = (0, 0)
    packages: frozenset[str] = frozenset()

    @classmethod
    def detect(cls) -> Device:
        import torch

        packages = frozenset(p for p in OPTIONAL_PACKAGES if importlib.util.find_spec(p) is not None)
        if not torch.cuda.is_available():
            return cls(cuda=False, packages=packages)
        capability = torch.cuda.get_device_capability()
        return cls(cuda=True, bf16=torch.cuda.is_bf16_supported(), capability=capability, packages=packages)

    def lacks(self, *, package: str | None = None, capability: tuple[int, int] | None = None) -> list[str]:
        """What is missing for an option that needs a CUDA GPU (of ``capability``) and ``package``."""
        missing = []
        if not self.cuda:
            missing.append("a CUDA GPU (this machine has none)")
        elif capability and self.capability < capability:
            have = ".".join(map(str, self.capability))
            missing.append(f"a GPU of compute capability {capability[0]}.{capability[1]}+ (this one is {have})")
        if package and package not in self.packages:
            missing.append(f"the {package} package (pip install 'reasoning-ner[{OPTIONAL_PACKAGES[package]}]')")
        return missing


def hardware_problems(config: TrainConfig, device: Device) -> list[str]:
    """One line per option of ``config`` that ``device`` cannot run. bf16 runs anywhere but on a GPU
    without it (on a CPU, PyTorch autocasts to bfloat16)."""
    no_bf16 = config.bf16 and device.cuda and not device.bf16
    needs: list[tuple[str, list[str]]] = [
        ("bf16", ["a GPU with bfloat16 (compute capability 8.0+)"] if no_bf16 else []),
        ("liger_kernel", device.lacks(package="liger_kernel") if config.liger_kernel else []),
        ("flash_attention", device.lacks(package="flash_attn", capability=(8, 0)) if config.flash_attention else []),
        ("deepspeed_zero", device.lacks(package="deepspeed") if config.deepspeed_zero else []),
    ]
    return [f"{option}: needs {' and '.join(missing)}" for option, missing in needs if missing]


def check_hardware(problems: Iterable[str]) -> None:
    problems = list(problems)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise TrainError(
            f"this machine cannot run the config as written:\n{lines}\n"
            "Turn those options off in the config to train without them (the result is then a different experiment)."
        )


# --- examples ----------------------------------------------------------------------------------------


def count_tokens(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> int:
    """Tokens of a conversation in the tokenizer's chat template, tokenized as the TRL trainers do."""
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return len(encoded["input_ids"])


def screen(rows: list[T], lengths: list[int], limit: int, policy: str, what: str) -> tuple[list[T], dict[str, Any]]:
    """Apply ``policy`` (drop | truncate | fail) to the rows longer than ``limit`` tokens; the rows to train on
    and stats for the manifest. "truncate" keeps them: the trainer cuts them to ``limit``."""
    over = [i for i, n in enumerate(lengths) if n > limit]
    stats = {"examples": len(rows), "too_long": len(over), "too_long_policy": policy, "max_tokens": limit}
    stats["longest"] = max(lengths, default=0)
    if over:
        message = (
            f"{len(over)} of {len(rows)} examples have {what} longer than {limit} tokens (longest {stats['longest']})"
        )
        if policy == "fail":
            raise TrainError(f"{message}; raise the limit, or set too_long to drop or truncate")
        _log.warning("%s: %s (too_long: %s)", message, "dropped" if policy == "drop" else "truncated", policy)
    keep = [i for i, n in enumerate(lengths) if n <= limit or policy != "drop"]
    rows = [rows[i] for i in keep]
    stats |= {"trained": len(rows), "tokens": sum(min(lengths[i], limit) for i in keep)}
    if not rows:
        raise TrainError(f"no examples left to train on ({len(over)} of {len(lengths)} too long)")
    return rows, stats


# --- the run -----------------------------------------------------------------------------------------


def deepspeed_config(stage: int) -> dict[str, Any] | None:
    """The ZeRO config the HF trainer fills in ("auto") from its own arguments, so both never disagree."""
    if not stage:
        return None
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    zero["reduce_bucket_size"] = "auto"
    if stage == 3:
        zero |= {"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto"}
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # save_model writes a whole HF directory
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def training_arguments(config: TrainConfig, device: Device, workdir: Path) -> dict[str, Any]:
    """The ``transformers.TrainingArguments`` part of a TRL trainer config, from ours, for a job on ``device`` with
    its work directory at ``workdir``. Pure (no model, no GPU needed): tests build the trainer configs of every
    preset from it on a CPU (``Device`` describes the GPU); the trainer defaults a run relies on are checked there
    too (tests/test_trainer_config.py)."""
    c = config
    return {
        "output_dir": str(workdir / "trainer"),
        "num_train_epochs": c.epochs,
        "max_steps": c.max_steps or -1,
        "learning_rate": c.learning_rate,
        "lr_scheduler_type": c.lr_scheduler,
        # An int counts steps, a float below 1 is a fraction of them (transformers 5).
        "warmup_steps": c.warmup_ratio if c.warmup_steps is None else c.warmup_steps,
        "weight_decay": c.weight_decay,
        "max_grad_norm": c.max_grad_norm,
        "per_device_train_batch_size": c.per_device_batch_size,
        "gradient_accumulation_steps": c.gradient_accumulation_steps,
        "bf16": c.bf16,
        "gradient_checkpointing": c.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if c.gradient_checkpointing else None,
        "use_liger_kernel": c.liger_kernel,
        "deepspeed": deepspeed_config(c.deepspeed_zero),
        "model_init_kwargs": {
            "dtype": "bfloat16" if c.bf16 else "float32",
            "attn_implementation": "flash_attention_2" if c.flash_attention else "sdpa",
        },
        "seed": c.seed,
        "logging_steps": c.logging_steps,
        **({"save_strategy": "steps", "save_steps": c.save_steps} if c.save_steps else {"save_strategy": "no"}),
        "save_total_limit": 1,  # the store keeps every checkpoint; the local disk only the newest
        "report_to": "none",
        "use_cpu": not device.cuda,
        "ddp_backend": ("nccl" if device.cuda else "gloo") if c.parallel.world_size > 1 else None,
    }


class TrainingRun:
    """One run of a training stage at its output address, in one process of the job."""

    def __init__(
        self, config: TrainConfig, stage: str, out: Output, source: Published, base: Backbone, settings: Settings
    ) -> None:
        self.config = config
        self.stage = stage
        self.out = out
        self.source = source
        self.base = base
        self.workdir = settings.home_dir / WORK_DIR / out.address
        self.published = out.published()
        self.device = Device.detect()
        self.checkpoint: str | None = None
        self.resumed_from: int | None = None
        self.stats: dict[str, Any] = {}

    @classmethod
    def open(
        cls,
        config: TrainConfig,
        store: Store,
        *,
        stage: str,
        kinds: Sequence[str],
        prefix: str,
        settings: Settings | None = None,
        problems: Callable[[Device], list[str]] = lambda device: [],
    ) -> TrainingRun:
        """The run of ``stage`` on ``config.dataset`` (one of ``kinds``) from ``config.model``; its output is at
        ``prefix/stage/<hash>``, pinned to the config, the dataset's digest and a published base model's.
        Unless it is published already, the machine must run every option (``problems``: the stage's own
        requirements) and the job must have the processes ``parallel`` asks for."""
        settings = settings or Settings()
        source = load_dataset(store, config.dataset, kinds, stage=stage)
        base = backbone(config.model, store, settings)
        digests = [source.digest, *([base.ref.digest] if base.ref else [])]
        out = store.output(output_address(stage, config_hash(config), digests, prefix=prefix))
        run = cls(config, stage, out, source, base, settings)
        if run.published is None:
            check_hardware([*hardware_problems(config, run.device), *problems(run.device)])
            check_memory(config, base.path, settings, store=store)  # a config that cannot fit its GPU: refused
            world = int(os.environ.get("WORLD_SIZE", "1"))
            if world != config.parallel.world_size:
                raise TrainError(
                    f"this run has {world} process(es) but `parallel` asks for {config.parallel.world_size} "
                    "(num_nodes x processes_per_node): start it with `python -m tasks.launch` (`rner train`)"
                )
        return run

    def arguments(self) -> dict[str, Any]:
        """The ``transformers.TrainingArguments`` part of a TRL trainer config, from ours (``training_arguments``)."""
        return training_arguments(self.config, self.device, self.workdir)

    def fetch_checkpoint(self) -> None:
        """A fresh work directory on every node, holding the newest complete checkpoint in the store if
        ``resume`` is on (the trainer continues from it). Call once the trainer config exists: it has set up
        the processes' communication."""
        from accelerate import PartialState

        state = PartialState()
        listing = self.newest_checkpoint() if self.config.resume else None
        if listing is not None:  # every process checks, so that all of them stop together
            check_world_size(listing, state.num_processes, self.out.store.uri(f"{self.out.address}/{CHECKPOINTS}"))
        local = self.workdir / "trainer" / f"checkpoint-{listing['step']}" if listing else None
        if state.is_local_main_process:
            shutil.rmtree(self.workdir, ignore_errors=True)
            if local is not None and listing is not None:
                files = [FileEntry.model_validate(f) for f in listing["files"]]
                self.out.store.fetch_tree(self.out.address, files, f"{CHECKPOINTS}/{local.name}", local)
        state.wait_for_everyone()
        if local is not None and listing is not None:
            self.checkpoint, self.resumed_from = str(local), listing["step"]
            _log.info("resuming from step %d of %s", listing["step"], self.out.store.uri(self.out.address))

    def dataset(
        self,
        row: Callable[[Any], dict[str, Any]],
        tokens: Callable[[dict[str, Any]], int],
        limit: int,
        policy: str,
        what: str,
    ) -> Dataset:
        """The dataset's records as trainer rows (``row``); rows over ``limit`` tokens go as ``policy`` says."""
        rows = [row(record) for record in self.out.store.split_records(self.source.manifest, "train")]
        rows, self.stats = screen(rows, [tokens(r) for r in rows], limit, policy, what)
        return Dataset.from_list(rows)

    def train(
        self, trainer_class: type, *, progress: Progress | None, curves: Sequence[str], **kwargs: Any
    ) -> Published:
        """Train a ``trainer_class`` (a TRL trainer of the base model, with ``kwargs``) from the checkpoint, if
        any; save the model, publish it with its report files and manifest, clean up. Every process returns
        the published output."""
        trainer = trainer_class(model=self.base.path, callbacks=[_StoreCheckpoints(self, progress)], **kwargs)
        trainer.train(resume_from_checkpoint=self.checkpoint)
        final = self.workdir / "final"
        trainer.save_model(str(final))  # every process: ZeRO-3 gathers the shards
        if trainer.is_world_process_zero():
            history = trainer.state.log_history
            files = self.out.put_tree(final, MODEL_PREFIX, role="model")
            files.append(self.out.put_file("training-curve", curve_png(history, curves), role="report", suffix=".png"))
            files.append(self.out.put_file("log-history", json.dumps(history).encode(), role="report", suffix=".json"))
            summary = {
                "base_model": self.config.model,
                "dataset": {"address": self.source.manifest.address, "digest": self.source.digest},
                "global_step": trainer.state.global_step,
                "resumed_from_step": self.resumed_from,
                "world_size": trainer.args.world_size,
                "final": _final_metrics(history),
                **self.stats,
            }
            try:
                inputs = [self.source.ref, *([self.base.ref] if self.base.ref else [])]
                self.out.publish(
                    kind="model", stage=self.stage, config=self.config, files=files, inputs=inputs, stats=summary
                )
            except AlreadyPublished:
                _log.warning("%s was published by another run meanwhile; keeping that one", self.out.address)
        trainer.accelerator.wait_for_everyone()
        if trainer.is_local_process_zero():
            shutil.rmtree(self.workdir, ignore_errors=True)
        published = self.out.store.load(self.out.address)
        trainer.accelerator.end_training()  # trackers, process group (transformers 5.17 has no Trainer.end)
        return published

    # -- checkpoints in the store ---------------------------------------------------------------

    def upload_checkpoint(self, step: int, world_size: int, is_local_main: bool, is_main: bool) -> None:
        from accelerate.utils import gather_object

        name = f"checkpoint-{step}"
        local = self.workdir / "trainer" / name
        mine = self.out.put_tree(local, f"{CHECKPOINTS}/{name}", role="checkpoint") if is_local_main else []
        files = {f.path: f for f in gather_object(mine)}  # one list per node, the shared files in each
        if is_main:
            listing = {
                "step": step,
                "world_size": world_size,
                "files": [f.model_dump(mode="json") for f in sorted(files.values(), key=lambda f: f.path)],
            }
            self.out.store.put(f"{self.out.address}/{CHECKPOINTS}/{name}.json", json.dumps(listing).encode())
            _log.info("checkpoint %d stored (%d files)", step, len(files))

    def newest_checkpoint(self) -> dict[str, Any] | None:
        """The listing of the newest complete checkpoint in the store (see ``upload_checkpoint``), or None. A
        listing that does not read back whole (a crash mid-write on a store without atomic writes) is reported
        and passed over for the one before it, so a damaged checkpoint never blocks the run's resumption."""
        paths = self.out.store.list(f"{self.out.address}/{CHECKPOINTS}")
        for step in sorted((int(m.group(1)) for p in paths if (m := _CHECKPOINT_LIST.search(p))), reverse=True):
            path = f"{self.out.address}/{CHECKPOINTS}/checkpoint-{step}.json"
            try:
                listing = _CheckpointListing.model_validate_json(self.out.store.get(path))
            except ValidationError as e:
                self.out.store.warn_once(
                    path, f"{self.out.store.uri(path)}: damaged checkpoint listing ({describe(e)}); skipped"
                )
                continue
            if listing.step == step:
                return listing.model_dump(mode="json", exclude_none=True)
            self.out.store.warn_once(path, f"{self.out.store.uri(path)}: names step {listing.step}; skipped")
        return None


class _CheckpointListing(BaseModel):
    """What ``upload_checkpoint`` writes beside each checkpoint (``world_size`` is absent in old listings)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    step: int
    world_size: int | None = None
    files: list[FileEntry]


def check_world_size(listing: dict[str, Any], world_size: int, where: str) -> None:
    """Refuse to resume a checkpoint (its ``listing``, under ``where``) written by another number of processes.

    ``parallel`` stays out of the output's address (the same global batch on more processes trains the same
    model), so a resumed run may well have another world size. Its checkpoint may not: ZeRO-3 partitions
    parameters and optimizer state into one file per process, and the RNG states and data position are per
    process, so a different world size either fails deep inside DeepSpeed or silently resumes something
    else. Checkpoints from before the world size was recorded resume unchecked, with a warning."""
    name = f"{where}/checkpoint-{listing['step']}"
    written = listing.get("world_size")
    if written is None:
        _log.warning("%s does not record the world size that wrote it: resuming it unchecked", name)
    elif written != world_size:
        raise TrainError(
            f"cannot resume {name}: it was written by {written} process(es) and this run has {world_size}; "
            f"run it with {written} (parallel: num_nodes x processes_per_node), or set resume: false to start over"
        )


def check_save_steps(save_steps: int | None, total_steps: int) -> str | None:
    """A warning (logged, and returned) when ``save_steps`` would never checkpoint this run: a failure would then
    restart it from its first step. Not an error: short runs (a low-resource fraction, a smoke run) need no
    checkpoints; the paper presets checkpoint several times per run (tests/test_config.py). ``total_steps``: the
    trainer's own count (it knows the packed sequences and GRPO's generation batches)."""
    if save_steps is None or save_steps <= total_steps:
        return None
    warning = (
        f"save_steps {save_steps} is more than this run's {total_steps} optimizer steps: it stores no checkpoint, "
        f"and a failure restarts it from step 1 (set save_steps to at most {total_steps} to resume instead)"
    )
    _log.warning(warning)
    return warning


def _final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last logged value of every metric (the trainer's summary entry included)."""
    final: dict[str, Any] = {}
    for entry in history:
        final |= entry
    return final


def curve_png(history: list[dict[str, Any]], keys: Sequence[str]) -> bytes:
    """One panel per metric in ``keys`` that was logged, against the optimizer step."""
    from matplotlib.figure import Figure

    series = {k: [(h["step"], h[k]) for h in history if k in h] for k in keys}
    series = {k: points for k, points in series.items() if points}
    figure = Figure(figsize=(7, 2.2 * max(1, len(series))), layout="constrained")
    axes = figure.subplots(max(1, len(series)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, points) in zip(axes, series.items(), strict=False):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


class _StoreCheckpoints(TrainerCallback):
    """Uploads each checkpoint the trainer saves, and reports progress."""

    def __init__(self, run: TrainingRun, progress: Progress | None) -> None:
        self.run = run
        self.progress = progress

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        check_save_steps(self.run.config.save_steps, state.max_steps)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.upload_checkpoint(
            state.global_step, args.world_size, state.is_local_process_zero, state.is_world_process_zero
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= state.max_steps and state.global_step % state.save_steps:
            # The trainer saves at the last step too; the final model is published right after, and a full
            # checkpoint of it (optimizer state included) would only double the upload.
            control.should_save = False
        if self.progress and state.is_world_process_zero:
            self.progress(state.global_step, state.max_steps)
        return control
