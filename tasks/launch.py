"""Start a training stage on N processes x M nodes, as its config's ``parallel`` says.

    python -m tasks.launch sft --config sft.yaml [--preset paper] [--store s3://…]
    python -m tasks.launch grpo --config grpo.yaml
    python -m tasks.launch sft --config-json '{"preset": "smoke", ...}'   # what job backends run

One process (1 x 1) runs the stage module directly; more (or DeepSpeed, which wants torchrun's environment
even alone) run under torchrun, which every node starts with the same command: the nodes meet at the
c10d rendezvous ``parallel.rdzv_endpoint`` (a ``host:port`` all of them reach; torchrun on the node that
owns the address hosts it), under an id derived from the config, so two jobs sharing an endpoint do not
mix. One node without an endpoint uses torchrun's ``--standalone`` (a local rendezvous on a free port).
On a CPU machine the processes train with gloo; on GPUs with NCCL.

GPUs: the node's visible GPUs (``CUDA_VISIBLE_DEVICES``, else all) are split: GRPO's ``rollout_gpus`` last
ones go to its ``trl vllm-serve`` server (passed on in ``RNER_ROLLOUT_GPUS``), and the trainers see only the
first ``processes_per_node`` of the rest, so rollouts never share a GPU with training. Every node keeps its
rollout GPUs free; only the first process (node 0) starts a server.

The stage's output goes to stdout as usual, its last line the published output's address and digest: the
first process of each node writes it; the others' stdout goes to torchrun's log directory (their stderr
stays here). The launcher exits with the job's exit status; SIGTERM stops the job (torchrun passes it on).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import typer

from schemas import GRPOConfig, SFTConfig, TrainConfig, config_hash
from tasks.errors import RnerError
from tasks.stage_cli import ConfigJSON, ConfigPath, PresetName, StoreURL, clean_errors, read_config

STAGES: dict[str, tuple[str, type[TrainConfig]]] = {"sft": ("tasks.sft", SFTConfig), "grpo": ("tasks.grpo", GRPOConfig)}
"""Training stage name → (module run in each process, its config class)."""

ROLLOUT_GPUS_ENV = "RNER_ROLLOUT_GPUS"
"""The GPUs of this node that the GRPO rollout server runs on (comma-separated), for ``tasks.grpo``."""

TORCHRUN_ENV = frozenset(
    {
        "RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME",
        "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE",
        "MASTER_ADDR", "MASTER_PORT", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "OMP_NUM_THREADS",
    }
)  # fmt: skip
"""What torchrun (torch.distributed.elastic) sets in each worker's environment, with every
``TORCHELASTIC_*`` variable (``TORCHRUN_ENV_PREFIX``): the worker's place in *this* job's process group.

A process that a worker starts must not inherit them when it runs a torch.distributed world of its own,
as ``trl vllm-serve`` does: with ``TORCHELASTIC_USE_AGENT_STORE=True`` torch's ``tcp://`` and ``env://``
rendezvous connect to the store as clients, expecting torchrun's agent to host it; in vLLM's own world nobody
hosts it and its workers wait forever. ``RANK``/``WORLD_SIZE``/``MASTER_*`` would likewise put it in the
trainers' world, and ``OMP_NUM_THREADS=1`` (torchrun's default for several processes per node) would
starve its CPU-side work."""
TORCHRUN_ENV_PREFIX = "TORCHELASTIC_"


def without_torchrun(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less what torchrun put there for its workers (``TORCHRUN_ENV``): the environment of a
    process that a worker starts outside the training job's process group."""
    return {k: v for k, v in environ.items() if k not in TORCHRUN_ENV and not k.startswith(TORCHRUN_ENV_PREFIX)}


_log = logging.getLogger("rner.launch")


class LaunchError(RnerError, ValueError):
    """A job that cannot be laid out on this node as its config asks."""


@dataclass(frozen=True)
class Launch:
    command: list[str]
    env: dict[str, str]
    """Set on top of the inherited environment."""


def split_gpus(gpus: Sequence[str], rollout: int) -> tuple[list[str], list[str]]:
    """(training GPUs, rollout GPUs): the last ``rollout`` of the node's GPUs serve rollouts."""
    if rollout >= len(gpus):
        raise LaunchError(f"rollout_gpus {rollout} leaves none of this node's {len(gpus)} GPU(s) for training")
    return list(gpus[: len(gpus) - rollout]), list(gpus[len(gpus) - rollout :])


def plan(stage: str, config: TrainConfig, stage_args: Sequence[str], gpus: Sequence[str]) -> Launch:
    """The command (and environment) that runs ``stage`` on this node; ``gpus``: the node's visible GPUs."""
    module = STAGES[stage][0]
    p = config.parallel
    rollout = config.rollout_gpus if isinstance(config, GRPOConfig) else 0
    env: dict[str, str] = {}
    if gpus:
        train, serve = split_gpus(gpus, rollout)
        if p.processes_per_node > len(train):
            raise LaunchError(
                f"{p.processes_per_node} processes per node need one GPU each; this node has {len(train)} for "
                f"training ({len(gpus)} visible, {rollout} for rollouts)"
            )
        env["CUDA_VISIBLE_DEVICES"] = ",".join(train[: p.processes_per_node])
        if serve:
            env[ROLLOUT_GPUS_ENV] = ",".join(serve)
    elif rollout:
        raise LaunchError(f"rollout_gpus {rollout}: this node has no GPU")
    if p.world_size == 1 and not config.deepspeed_zero:
        return Launch([sys.executable, "-m", module, *stage_args], env)
    if p.rdzv_endpoint:
        job_id = config_hash(config)[:16]  # the same on every node, another for another job
        rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", p.rdzv_endpoint, "--rdzv-id", job_id]
    elif p.num_nodes == 1:
        rendezvous = ["--standalone"]
    else:
        raise LaunchError(f"{p.num_nodes} nodes need parallel.rdzv_endpoint: a host:port every node reaches")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(p.num_nodes)]
    torchrun += ["--nproc-per-node", str(p.processes_per_node), *rendezvous]
    if p.processes_per_node > 1:  # one result line per node: the other processes' stdout goes to torchrun's logs
        torchrun += ["--redirects", ",".join(f"{rank}:1" for rank in range(1, p.processes_per_node))]
    return Launch([*torchrun, "-m", module, *stage_args], env)


def visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named:
        return [g.strip() for g in named.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def launch(
    stage: str,
    *,
    config: Path | None = None,
    config_json: str | None = None,
    preset: str | None = None,
    store: str | None = None,
) -> int:
    """Run the job's processes of this node to the end; their exit status."""
    if stage not in STAGES:
        raise LaunchError(f"no training stage {stage!r} (known: {', '.join(STAGES)})")
    loaded = read_config(STAGES[stage][1], config, config_json, preset)
    source = ["--config", str(config)] if config is not None else ["--config-json", str(config_json)]
    args = [*source, *(["--preset", preset] if preset else []), *(["--store", store] if store else [])]
    job = plan(stage, loaded, args, visible_gpus())
    _log.info("launching %s: %s %s", stage, " ".join(f"{k}={v}" for k, v in job.env.items()), " ".join(job.command))
    process = subprocess.Popen(job.command, env={**os.environ, **job.env})
    try:
        return process.wait()
    finally:
        if process.poll() is None:  # we are being stopped: stop the job with us
            process.terminate()
            process.wait()


def train_command(stage: str) -> Callable[..., None]:
    """The typer command that launches ``stage`` (``rner train sft|grpo``, ``python -m tasks.launch``)."""

    def command(
        config: ConfigPath = None,
        config_json: ConfigJSON = None,
        preset: PresetName = None,
        store: StoreURL = None,
    ) -> None:
        from tasks.serving import raise_on_sigterm

        raise_on_sigterm()
        raise typer.Exit(launch(stage, config=config, config_json=config_json, preset=preset, store=store))

    command.__doc__ = f"Train: run the {stage} stage on the processes and nodes its config's `parallel` asks for."
    return command


def main() -> None:
    app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
    for name in STAGES:
        app.command(name)(train_command(name))
    with clean_errors():
        app()


if __name__ == "__main__":
    main()
