"""The Slurm executor: each attempt of a training is one batch job on a Slurm cluster.

Chosen with `micontrol --executor slurm` or MITORCH_EXECUTOR=slurm, on a login node (a machine
where sbatch, squeue and scancel work). Its identity is `slurm:<cluster name>`. The job of attempt
N is named `mitorch-<training id>-<N>`; its batch script execs `PYTHON -m mitorch.cli.mitrain
--training-id ID --attempt N` (the local executor's command) with the controller's environment
(--export=ALL: MITORCH_DB_URI, MITORCH_ARTIFACTS_URI, ... reach the job without being arguments),
and appends its output to the attempt's train.log (mitorch.files.artifacts.attempt_dir), on a
filesystem the login node and the compute nodes share. Resources come from the MITORCH_SLURM_*
settings (mitorch.service.executors.slurm_settings).

Several processes. A training of `num_processes` P on MITORCH_SLURM_NODES N is one job of N nodes
with P tasks on each: the batch script runs `srun`, which starts one mitrain per task, and each is
one rank of the DDP run (RANK, WORLD_SIZE and LOCAL_RANK from SLURM_PROCID, SLURM_NTASKS and
SLURM_LOCALID; MASTER_ADDR the job's first node). Rank 0 alone records the attempt, as under
torchrun or AzureML. srun is the batch shell then, and passes the signals below on to every rank.

What state() reports, from `squeue -t all` (which sees an ended job for MinJobAge seconds):
    PENDING, CONFIGURING, SUSPENDED, held or requeue states: "waiting".
    RUNNING, COMPLETING, SIGNALING, STAGE_OUT: "running".
    COMPLETED, CANCELLED, FAILED, TIMEOUT, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY, ...; a job id
        Slurm no longer knows (purged after MinJobAge): "gone". There is no sacct here.
    squeue failing (slurmctld does not answer), a run of another cluster: "unknown".

Signals. cancel() sends SIGTERM to the batch shell alone (`scancel --batch --signal=TERM`), which
is mitrain itself: it checkpoints and records itself cancelled, as under the local executor; its
data-loading workers are not signalled. In a job of srun tasks the SIGTERM goes to the job's steps
instead (`scancel --signal=TERM`): every rank, and their workers, which ride out a first SIGTERM
(mitorch.data.loaders); never to srun, which answers SIGTERM by killing its tasks. A job still pending is cancelled outright. cancel(force=True) is a plain `scancel`. Jobs
are submitted with `--signal=B:TERM@MITORCH_SLURM_TERM_BEFORE_S` (`--signal=TERM@...` with srun
tasks), so before its time limit (or a preemption's grace time) the training gets SIGTERM and goes
back to the queue, resuming from its checkpoint in a new attempt.

Slurm's own requeue. One job is one attempt: jobs are sent with --no-requeue, so Slurm ends the job
of a failed node (NODE_FAIL) instead of running it again, and `scontrol requeue` is refused; the
controller starts the next attempt. A job that Slurm requeues anyway (MITORCH_SLURM_SBATCH_ARGS
with --requeue, a site's submit plugin) keeps its job id and would run `mitrain --attempt N` again:
once its first run has ended, state() reports such a job (restart count above 0) "gone" and
cancels it; should its rerun start first, attempt fencing stops it: its attempt is no longer
current (the first run recorded itself preempted, or the controller requeued it), so its first
write is refused and it exits (status 75) having written nothing.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from mitorch.errors import ConfigError, MiTorchError
from mitorch.files import artifacts
from mitorch.files.artifacts import attempt_dir
from mitorch.service.executors.base import Executor, LaunchError, Launched, RunState, attempt_command
from mitorch.service.executors.slurm_settings import SlurmSettings, processes

__all__ = ["SlurmExecutor", "batch_script", "job_name"]

WAITING = {"PENDING", "CONFIGURING", "SUSPENDED", "STOPPED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
           "RESV_DEL_HOLD", "SPECIAL_EXIT", "RESIZING"}
RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY", "REVOKED"}
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol")
_TIMEOUT_S = 60.0
_UNKNOWN_JOB = "Invalid job id specified"
# One squeue per state(): a job's answer is never older than the call.
_FORMAT = "JobID:40,State:30,RestartCnt:10,Reason:80"


def job_name(training_id: str, attempt: int) -> str:
    """The batch job's name of a training's attempt."""
    return f"mitorch-{training_id}-{attempt}"


@dataclass(frozen=True)
class _Job:
    state: str
    restarts: int
    reason: str


class SlurmExecutor(Executor):
    """Runs attempts as batch jobs of one Slurm cluster; see the module's docstring.

    Args:
        settings: default SlurmSettings.from_env().

    Raises:
        ConfigError: a MITORCH_SLURM_* setting is wrong, or the cluster's name cannot be read.
    """

    def __init__(self, settings: SlurmSettings | None = None) -> None:
        self.settings = settings or SlurmSettings.from_env()
        self.capacity = self.settings.capacity
        self.cluster = self.settings.cluster_name or _cluster_name()
        self.name = f"slurm:{self.cluster}"
        self._gone: dict[str, str] = {}  # job id -> why state() last said "gone"

    def launch(self, training: dict[str, Any], gpu: int | None = None) -> Launched:
        """Submits the attempt's batch job (Slurm places it on a node and its GPUs: `gpu` is unused).

        Returns:
            `slurm:<cluster>:<job id>` as the run id, and the job id as `slurm_job`.
        """
        name = job_name(training["id"], training["attempt"])
        folder = attempt_dir(training["id"], training["attempt"])
        tasks = self.settings.nodes * processes(training)
        script = batch_script(name, attempt_command(self.settings.python, training), tasks)
        output = str(folder / "train.log").replace("%", "%%")  # sbatch reads %j, %x... in the name
        options = [f"--job-name={name}", f"--output={output}", "--open-mode=append", "--export=ALL",
                   "--no-requeue", *self.settings.resources(training, tasks)]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LaunchError(f"cannot create the attempt's folder {folder}: {e.strerror or e}") from None
        done = self._slurm("sbatch", "--parsable", *options, script=script)
        job = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not job.isdigit():
            raise LaunchError(f"sbatch refused job {name}: {_first_line(done) or 'no job id in its answer'}")
        self._gone.pop(job, None)
        return Launched(run_id=f"{self.name}:{job}", details={"slurm_job": job, "slurm_tasks": str(tasks)})

    def state(self, training: dict[str, Any]) -> RunState:
        job_id = self._job_id(training)
        if job_id is None:
            return "unknown"  # a run of another cluster, or none recorded
        self._gone.pop(job_id, None)
        job = self._query(job_id)
        if job is None:
            return "unknown"
        if job.restarts > 0 and job.state not in ENDED and job.state != "COMPLETING":  # its first run has ended
            return self._requeued(job_id, job, training.get("attempt", 0))
        if job.state in WAITING:
            return "waiting"
        if job.state in RUNNING:
            return "running"
        if job.state in ENDED or job.state == "":
            self._gone[job_id] = _ended(job_id, job)
            return "gone"
        return "unknown"

    def gone_reason(self, training: dict[str, Any]) -> str | None:
        """Why state() last said "gone": the job's end state (and Slurm's reason), its absence from
        slurmctld, or its requeue by Slurm."""
        job_id = self._job_id(training)
        return None if job_id is None else self._gone.get(job_id)

    def cancel(self, training: dict[str, Any], force: bool = False) -> bool:
        """Stops the training's job: a plain `scancel` with force, else SIGTERM to mitrain (the
        batch shell) so it checkpoints and records itself; a job still pending is cancelled.

        Returns:
            True when Slurm took the request or no longer has the job; False when scancel
            failed otherwise (slurmctld does not answer): the controller asks again next tick.
        """
        job_id = self._job_id(training)
        if job_id is None:
            return False  # not a job of this cluster
        if force:
            return self._scancel(job_id)
        # --state=PENDING cancels the job only while it is pending; a running one is left to the
        # signal: to the batch shell of a one-process job (mitrain itself), to the job's steps in
        # another (the srun tasks, one per rank), never to srun, which answers SIGTERM with SIGKILL.
        to_batch = ["--batch"] if int(training.get("slurm_tasks") or 1) == 1 else []
        return self._scancel("--state=PENDING", job_id) and self._scancel(*to_batch, "--signal=TERM", job_id)

    def check_ready(self) -> None:
        """Checks that the Slurm clients are on PATH, that the folder of the trainings' attempts
        can be written (the jobs write there from the compute nodes), and that slurmctld answers
        (else a tick would count each launch as a failed one).

        Raises:
            MiTorchError: one line naming what is missing, cannot be written or does not answer.
        """
        missing = [client for client in CLIENTS if shutil.which(client) is None]
        if missing:
            raise ConfigError(f"the Slurm executor needs {', '.join(CLIENTS)} on PATH; missing: {', '.join(missing)} "
                              "(run micontrol on a Slurm login node)")
        artifacts.remote_root()  # raises for a URI that is neither a folder nor a Blob container
        root = artifacts.training_dir("_").parent
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".mitorch-slurm-check-"):
                pass
        except OSError as e:
            raise ConfigError(f"the Slurm executor cannot write the trainings' folder {root} ({e.strerror or e}); "
                              "set MITORCH_ARTIFACTS_URI to a folder the login and compute nodes share") from None
        ping = self._slurm("scontrol", "ping")
        if ping.returncode != 0:
            raise MiTorchError(f"slurmctld of Slurm cluster {self.cluster} does not answer ({_first_line(ping)}); "
                               "no training is claimed until it does")

    # Helpers -----------------------------------------------------------------------------------

    def _job_id(self, training: dict[str, Any]) -> str | None:
        run_id = training.get("run_id") or ""
        job = run_id[len(self.name) + 1:] if run_id.startswith(self.name + ":") else ""
        return job if job.isdigit() else None

    def _query(self, job_id: str) -> _Job | None:
        """The job as squeue shows it now; an empty state when Slurm no longer knows it; None when
        squeue fails (slurmctld does not answer)."""
        done = self._slurm("squeue", "-h", "-t", "all", "-j", job_id, "-O", _FORMAT)
        if done.returncode != 0:
            return _Job("", 0, "") if _UNKNOWN_JOB in done.stderr else None
        return _parse_jobs(done.stdout).get(job_id, _Job("", 0, ""))

    def _requeued(self, job_id: str, job: _Job, attempt: int) -> RunState:
        """A job Slurm requeued would run the attempt again, which fencing refuses: it is cancelled."""
        cancelled = "cancelled" if self._scancel(job_id) else "scancel failed; its rerun stops on its first write"
        self._gone[job_id] = (f"Slurm requeued job {job_id} (restart {job.restarts}, {job.reason}): attempt "
                              f"{attempt} runs once; {cancelled}")
        return "gone"

    def _scancel(self, *args: str) -> bool:
        done = self._slurm("scancel", *args)
        return done.returncode == 0 or _UNKNOWN_JOB in done.stderr

    def _slurm(self, *argv: str, script: str | None = None) -> subprocess.CompletedProcess:
        """A Slurm client's answer; a client that cannot run or hangs answers as a failure."""
        try:
            return subprocess.run(list(argv), input=script, capture_output=True, text=True, timeout=_TIMEOUT_S,
                                  stdin=None if script is not None else subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"no answer in {_TIMEOUT_S:g} s" if isinstance(e, subprocess.TimeoutExpired) else (e.strerror or e)
            return subprocess.CompletedProcess(list(argv), 1, "", f"cannot run {argv[0]}: {why}")


def batch_script(name: str, command: list[str], tasks: int) -> str:
    """The batch script of a job: one training process execs `command`; several are one srun
    task each, every task one rank of the DDP run, its place read from Slurm's variables."""
    lines = ["#!/bin/bash", f"# {name}, sent by MiTorch's Slurm executor"]
    if tasks == 1:
        return "\n".join([*lines, f"exec {shlex.join(command)}", ""])
    # The ranks meet at the first node of the job, on a port of the job's own. srun runs
    # --ntasks-per-node tasks on each of --nodes nodes, each with its CPUs (srun 22.05 does not
    # take --cpus-per-task from the batch job by itself), and ends the job when a task fails.
    rank = 'export RANK="$SLURM_PROCID" WORLD_SIZE="$SLURM_NTASKS" LOCAL_RANK="$SLURM_LOCALID"; exec "$@"'
    return "\n".join([
        *lines,
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        'export MASTER_PORT="$((20000 + SLURM_JOB_ID % 20000))"',
        'exec srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} '
        f"bash -c {shlex.quote(rank)} {shlex.join([name, *command])}",
        ""])


def _parse_jobs(listing: str) -> dict[str, _Job]:
    jobs = {}
    for line in listing.splitlines():
        fields = line.split(None, 3)
        if len(fields) >= 3 and fields[2].isdigit():
            jobs[fields[0]] = _Job(fields[1], int(fields[2]), fields[3].strip() if len(fields) > 3 else "")
    return jobs


def _ended(job_id: str, job: _Job) -> str:
    if not job.state:
        return f"Slurm no longer knows job {job_id} (it ended longer ago than MinJobAge)"
    reason = f" ({job.reason})" if job.reason and job.reason != "None" else ""
    return f"Slurm job {job_id} ended {job.state}{reason}"


def _first_line(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return re.sub(r"^\w+: error: ", "", lines[0]) if lines else ""


def _cluster_name() -> str:
    """ClusterName of `scontrol show config`."""
    try:
        done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"cannot read the Slurm cluster's name with scontrol ({e}); "
                          "set MITORCH_SLURM_CLUSTER_NAME or run micontrol on a Slurm login node") from None
    found = re.search(r"^ClusterName\s*=\s*(\S+)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise ConfigError(f"cannot read the Slurm cluster's name with scontrol show config "
                          f"({(done.stderr.strip().splitlines() or ['no ClusterName'])[0]}); "
                          "set MITORCH_SLURM_CLUSTER_NAME")
    return found.group(1)
