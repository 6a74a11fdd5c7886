"""The Slurm executor's settings (MITORCH_SLURM_* variables) and the sbatch options they make.

    MITORCH_SLURM_PARTITION     --partition         (default: the cluster's default partition)
    MITORCH_SLURM_ACCOUNT       --account           (default: the user's default account)
    MITORCH_SLURM_QOS           --qos               (default: the account's default QOS)
    MITORCH_SLURM_TIME          --time, a Slurm time limit: MINUTES, HH:MM:SS, D-HH:MM...
                                                    (default: the partition's limit)
    MITORCH_SLURM_CPUS          --cpus-per-task, per training process (default: Slurm's, 1)
    MITORCH_SLURM_MEM           --mem, per node: 16G, 64000M... (default: the partition's)
    MITORCH_SLURM_GPUS          --gpus-per-node (default: none)
    MITORCH_SLURM_NODES         --nodes, each running the training's num_processes (default 1)
    MITORCH_SLURM_CONSTRAINT    --constraint, node features: "a100|h100" (default: none)
    MITORCH_SLURM_SBATCH_ARGS   further sbatch options, split as a shell would; they come last,
                                so they override MiTorch's own (default: none)
    MITORCH_SLURM_CAPACITY      trainings of this executor at once, pending ones included (default 4)
    MITORCH_SLURM_TERM_BEFORE_S seconds before the time limit at which the training gets SIGTERM
                                to checkpoint and requeue itself (default 120; Slurm sends it up
                                to 30 s late, and 0 turns the warning off)
    MITORCH_SLURM_PYTHON        the interpreter the job runs `-m mitorch.cli.mitrain` with; it
                                must exist on the compute nodes (default: the controller's own)
    MITORCH_SLURM_CLUSTER_NAME  the cluster's name in the executor's identity `slurm:<name>`
                                (default: ClusterName of `scontrol show config`)

A training's own `num_processes` (its DDP processes on one machine) becomes --ntasks-per-node:
with more than one task in the job, srun starts each as one rank (mitorch.service.executors.slurm).
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from mitorch.envvars import env_int
from mitorch.errors import ConfigError

_VARIABLE = "MITORCH_SLURM_{}"


def _text(name: str) -> str | None:
    return os.environ.get(_VARIABLE.format(name), "").strip() or None


def _extra_args() -> list[str]:
    text = _text("SBATCH_ARGS") or ""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ConfigError(f"MITORCH_SLURM_SBATCH_ARGS must split as shell words ({e}), got {text[:80]!r}") from None


@dataclass(frozen=True)
class SlurmSettings:
    """Where and with what the Slurm executor's jobs run; from_env() reads the MITORCH_SLURM_* variables."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    cpus: int | None = None
    mem: str | None = None
    gpus: int | None = None
    nodes: int = 1
    constraint: str | None = None
    extra_args: list[str] = field(default_factory=list)
    capacity: int = 4
    term_before_s: int = 120
    python: str = sys.executable
    cluster_name: str | None = None

    @classmethod
    def from_env(cls) -> SlurmSettings:
        """The settings of the MITORCH_SLURM_* variables.

        Raises:
            ConfigError: a number that is not one; the message names the variable.
        """
        cpus = env_int("MITORCH_SLURM_CPUS", 0, minimum=1) or None
        gpus = env_int("MITORCH_SLURM_GPUS", 0, minimum=0) or None
        nodes = env_int("MITORCH_SLURM_NODES", 1, minimum=1)
        return cls(partition=_text("PARTITION"), account=_text("ACCOUNT"), qos=_text("QOS"), time=_text("TIME"),
                   cpus=cpus, mem=_text("MEM"), gpus=gpus, nodes=nodes, constraint=_text("CONSTRAINT"),
                   extra_args=_extra_args(), capacity=env_int("MITORCH_SLURM_CAPACITY", 4, minimum=1),
                   term_before_s=env_int("MITORCH_SLURM_TERM_BEFORE_S", 120, minimum=0),
                   python=_text("PYTHON") or sys.executable, cluster_name=_text("CLUSTER_NAME"))

    def resources(self, training: dict[str, Any], tasks: int = 1) -> list[str]:
        """The sbatch options of a training's job (of `tasks` srun tasks in all, or 1: mitrain is
        the batch shell): where it runs and what it holds, then the extra ones (last, so they win)."""
        options = [f"--nodes={self.nodes}", f"--ntasks-per-node={processes(training)}"]
        named = (("partition", self.partition), ("account", self.account), ("qos", self.qos), ("time", self.time),
                 ("cpus-per-task", self.cpus), ("mem", self.mem), ("gpus-per-node", self.gpus),
                 ("constraint", self.constraint))
        options += [f"--{option}={value}" for option, value in named if value is not None]
        if self.term_before_s:
            # B: to the batch shell alone, which is mitrain (the script execs it): it checkpoints and
            # forwards the signal to its own training processes, as on SIGTERM anywhere. With srun
            # tasks, to the tasks (every rank), not to srun, which would kill them.
            options.append(f"--signal={'B:' if tasks == 1 else ''}TERM@{self.term_before_s}")
        return options + self.extra_args


def processes(training: dict[str, Any]) -> int:
    """The training processes mitrain starts on its node: the config's num_processes (1 when unset)."""
    wanted = (training.get("config") or {}).get("num_processes")
    return wanted if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 1 else 1
