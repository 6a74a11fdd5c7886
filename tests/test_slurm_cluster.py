"""What the Slurm executor will rely on, on a real (private, single-node) Slurm cluster: sbatch and
squeue, job arrays, which scancel form lets a script handle TERM, the early-warning signal before
a time limit, requeue, drain and down, and how long an ended job stays visible.

The numbers each test observes are printed (`pytest -s` shows them)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.slurm_cluster import KILL_WAIT, MIN_JOB_AGE, SlurmCluster, slurm_cluster, wait_for  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow

# A batch script that records what it sees and the signals it gets into the marker file $1.
TRAPPING = """#!/bin/bash
marker=$1
trap 'sleep 1; echo "TERM $(date +%s.%N)" >> "$marker"; exit 0' TERM
trap 'echo "USR1 $(date +%s.%N)" >> "$marker"' USR1
echo "started job=$SLURM_JOB_ID restart=${SLURM_RESTART_COUNT:-unset} at $(date +%s.%N)" >> "$marker"
env | grep ^SLURM_ | sort > "$marker.env.${SLURM_RESTART_COUNT:-0}"
echo "output of run ${SLURM_RESTART_COUNT:-0}"
for i in $(seq 1 ${2:-600}); do sleep 0.1; done
echo "finished" >> "$marker"
"""


def job_state(cluster: SlurmCluster, job: str) -> str:
    """The job's state from slurmctld (squeue -t all); '' once it is purged."""
    out = cluster.run("squeue", "-h", "-t", "all", "-j", job, "-o", "%T", check=False).stdout.split()
    return out[0] if out else ""


def job_field(cluster: SlurmCluster, job: str, name: str) -> str:
    out = cluster.run("scontrol", "show", "job", job).stdout
    return next(item.split("=", 1)[1] for item in out.split() if item.startswith(name + "="))


def wait_state(cluster: SlurmCluster, job: str, *states: str, timeout: float = 30.0) -> str:
    return wait_for(lambda: (s := job_state(cluster, job)) in states and s, timeout, f"job {job} to be {'/'.join(states)}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def submit_trapping(cluster: SlurmCluster, tmp_path: Path, *args: str, seconds_x10: int = 600) -> tuple[str, Path]:
    script = tmp_path / "trapping.sh"
    script.write_text(TRAPPING)
    marker = tmp_path / "marker"
    job = cluster.sbatch("--job-name=trapping", f"--output={tmp_path}/%j.out", *args, str(script), str(marker),
                         str(seconds_x10))
    return job, marker


def wait_started(marker: Path, runs: int = 1, timeout: float = 30.0) -> None:
    wait_for(lambda: sum(line.startswith("started") for line in lines(marker)) >= runs, timeout,
             f"run {runs} of the batch script to start (marker {marker})")


@pytest.fixture(scope="module", autouse=True)
def early_warning_job(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """Submitted when the module starts: slurmctld checks time limits (and sends --signal warnings)
    on a 30 s tick, so its test (placed after the requeue test) waits for that tick while the
    tests before it run beside the job, which holds one of the node's CPUs meanwhile."""
    folder = tmp_path_factory.mktemp("early-warning")
    job, marker = submit_trapping(slurm_cluster, folder, "--time=1", "--signal=B:USR1@50")
    yield job, marker, time.time()
    slurm_cluster.run("scancel", job, check=False)


def test_cluster_is_up(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.conf.is_file() and slurm_cluster.env["SLURM_CONF"] == str(slurm_cluster.conf)
    # Up and taking jobs. The early-warning job runs beside this test on one of the node's CPUs;
    # sinfo may still call the node allocated for a few seconds after the first job of a freshly
    # started cluster begins (scontrol already says mixed), so any of the three states is up.
    assert slurm_cluster.node_state() in ("idle", "mixed", "allocated")
    assert slurm_cluster.run("scontrol", "ping").stdout.count("UP") == 1
    print(f"\ncluster started in {slurm_cluster.started_in:.1f} s")


def test_sbatch_runs_shows_in_squeue_and_ends(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = tmp_path / "hello.sh"
    script.write_text('#!/bin/bash\necho "hello from $SLURM_JOB_NAME"\nsleep 2\necho "bye"\n')
    began = time.monotonic()
    job = slurm_cluster.sbatch("--job-name=hello", f"--output={tmp_path}/%x-%j.out", str(script))
    assert job.isdigit()
    wait_for(lambda: slurm_cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "RUNNING", 30,
             f"squeue to show job {job} RUNNING")
    running = time.monotonic() - began
    wait_state(slurm_cluster, job, "COMPLETED")
    assert (tmp_path / f"hello-{job}.out").read_text() == "hello from hello\nbye\n"
    # Plain squeue (no -t) lists pending, running and completing jobs only: an ended job drops out at once.
    assert slurm_cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip() == ""
    print(f"\nsbatch -> RUNNING in squeue: {running:.2f} s")


def test_job_array_runs_every_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    array = slurm_cluster.sbatch("--job-name=array", "--array=0-1", f"--output={tmp_path}/%A_%a.out",
                                 "--wrap", 'echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID count $SLURM_ARRAY_TASK_COUNT"')
    for task in (0, 1):
        wait_state(slurm_cluster, f"{array}_{task}", "COMPLETED")
        assert (tmp_path / f"{array}_{task}.out").read_text() == f"task {task} of {array} count 2\n"


@pytest.mark.parametrize(("form", "gets_term", "final"), [
    # Plain scancel: TERM (after CONT) to every process of the job, batch shell included; KILL
    # KillWait seconds later. The job ends CANCELLED whatever the script exits with.
    ((), True, "CANCELLED"),
    # TERM to every process, batch shell included, and nothing else: the script decides how it ends.
    (("--signal=TERM", "--full"), True, "COMPLETED"),
    # Without --full or --batch a signal goes to the job's steps (srun) only: a batch script never sees it.
    (("--signal=TERM",), False, "RUNNING"),
])
def test_which_scancel_gives_the_script_a_term(slurm_cluster: SlurmCluster, tmp_path: Path,
                                               form: tuple[str, ...], gets_term: bool, final: str) -> None:
    job, marker = submit_trapping(slurm_cluster, tmp_path)
    wait_started(marker)
    slurm_cluster.run("scancel", *form, job)
    if gets_term:
        wait_for(lambda: any(line.startswith("TERM") for line in lines(marker)), 10, f"TERM in {marker}")
        assert wait_state(slurm_cluster, job, "CANCELLED", "COMPLETED", "FAILED", timeout=KILL_WAIT + 10) == final
    else:
        time.sleep(2)
        assert job_state(slurm_cluster, job) == final and not any(line.startswith("TERM") for line in lines(marker))
        slurm_cluster.run("scancel", job)
        wait_state(slurm_cluster, job, "CANCELLED", timeout=KILL_WAIT + 10)


def test_requeue_runs_the_job_again(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job, marker = submit_trapping(slurm_cluster, tmp_path, "--requeue", seconds_x10=30)
    wait_started(marker)
    began = time.monotonic()
    slurm_cluster.run("scontrol", "requeue", job)
    wait_started(marker, runs=2)
    again = time.monotonic() - began
    wait_state(slurm_cluster, job, "COMPLETED")
    runs = [line for line in lines(marker) if line.startswith("started")]
    assert runs[0].split()[1:3] == [f"job={job}", "restart=unset"]
    assert runs[1].split()[1:3] == [f"job={job}", "restart=1"]  # same job id, SLURM_RESTART_COUNT=1
    assert job_field(slurm_cluster, job, "Restarts") == "1"
    # The requeue KILLs the first run (its TERM trap may run), and the output file starts afresh.
    assert (tmp_path / f"{job}.out").read_text() == "output of run 1\n"
    first, second = (dict(line.split("=", 1) for line in lines(Path(f"{marker}.env.{n}"))) for n in (0, 1))
    changed = sorted(key for key in first.keys() | second.keys() if first.get(key) != second.get(key))
    assert "SLURM_RESTART_COUNT" in changed
    print(f"\nscontrol requeue -> running again in {again:.1f} s; environment changes: {changed}; marker {lines(marker)}")


def test_early_warning_signal_reaches_the_batch_script(slurm_cluster: SlurmCluster, early_warning_job: tuple) -> None:
    job, marker, submitted = early_warning_job
    warned = wait_for(lambda: [line for line in lines(marker) if line.startswith("USR1")], 60,
                      f"USR1 from --signal=B:USR1@50 in {marker}")
    after = float(warned[0].split()[1]) - submitted
    assert after < 60, "the warning must come before the 1-minute time limit"
    assert job_state(slurm_cluster, job) == "RUNNING"
    slurm_cluster.run("scancel", job)
    print(f"\n--time=1 --signal=B:USR1@50 (due at 10 s): USR1 {after:.1f} s after sbatch")


def test_drain_lets_the_running_job_finish(slurm_cluster: SlurmCluster, tmp_path: Path, early_warning_job: tuple) -> None:
    slurm_cluster.run("scancel", early_warning_job[0])
    job, marker = submit_trapping(slurm_cluster, tmp_path, seconds_x10=30)
    wait_started(marker)
    blocked = ""
    try:
        slurm_cluster.run("scontrol", "update", f"nodename={slurm_cluster.node}", "state=drain", "reason=test-drain")
        assert slurm_cluster.node_state() == "draining"
        assert wait_state(slurm_cluster, job, "COMPLETED", "CANCELLED", "FAILED", "PENDING") == "COMPLETED"
        assert lines(marker)[-1] == "finished" and job_field(slurm_cluster, job, "Restarts") == "0"
        slurm_cluster.wait_node("drained", timeout=10)
        blocked = slurm_cluster.sbatch(f"--output={tmp_path}/%j.out", "--wrap", "true")
        time.sleep(3)
        assert job_state(slurm_cluster, blocked) == "PENDING"
    finally:
        slurm_cluster.run("scontrol", "update", f"nodename={slurm_cluster.node}", "state=resume")
    wait_state(slurm_cluster, blocked, "COMPLETED")  # resume lets the held job start
    slurm_cluster.wait_node("idle", timeout=10)


def test_down_requeues_the_running_job(slurm_cluster: SlurmCluster, tmp_path: Path, early_warning_job: tuple) -> None:
    slurm_cluster.run("scancel", early_warning_job[0])
    job, marker = submit_trapping(slurm_cluster, tmp_path, "--open-mode=append", seconds_x10=20)
    wait_started(marker)
    try:
        slurm_cluster.run("scontrol", "update", f"nodename={slurm_cluster.node}", "state=down", "reason=test-down")
        assert wait_state(slurm_cluster, job, "PENDING", "COMPLETED", "CANCELLED", "FAILED", "NODE_FAIL") == "PENDING"
        assert job_field(slurm_cluster, job, "Restarts") == "1"
        time.sleep(2)
        assert slurm_cluster.node_state() == "down"  # ReturnToService=1: an admin's DOWN stays until resume
        assert job_state(slurm_cluster, job) == "PENDING"
        print(f"\nafter state=down: marker {lines(marker)}, reason {job_field(slurm_cluster, job, 'Reason')}")
    finally:
        slurm_cluster.run("scontrol", "update", f"nodename={slurm_cluster.node}", "state=resume")
    wait_started(marker, runs=2)
    wait_state(slurm_cluster, job, "COMPLETED")
    slurm_cluster.wait_node("idle", timeout=10)
    # --open-mode=append keeps the first run's output across the requeue.
    output = (tmp_path / f"{job}.out").read_text()
    assert "output of run 0\n" in output and output.endswith("output of run 1\n")


def test_ended_job_stays_visible_for_min_job_age(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.sbatch(f"--output={tmp_path}/%j.out", "--wrap", "true")
    wait_state(slurm_cluster, job, "COMPLETED")
    ended = time.monotonic()
    assert job_field(slurm_cluster, job, "JobState") == "COMPLETED"
    wait_for(lambda: slurm_cluster.run("scontrol", "show", "job", job, check=False).returncode != 0,
             MIN_JOB_AGE + 30, f"job {job} to be purged")
    visible = time.monotonic() - ended
    assert job_state(slurm_cluster, job) == ""
    assert visible >= MIN_JOB_AGE - 2, "an ended job must stay visible about MinJobAge seconds"
    print(f"\nMinJobAge={MIN_JOB_AGE}: ended job visible {visible:.1f} s after COMPLETED was seen")
