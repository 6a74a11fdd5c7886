"""A private single-node Slurm cluster for tests: its own munged, slurmctld and slurmd on free ports,
with every file (config, munge key and socket, state, spool, logs) under one temporary folder.

Test modules import the fixture itself (`from tests.slurm_cluster import slurm_cluster`); it is
session-scoped, so the cluster starts once per pytest run. Without the Slurm binaries it skips,
unless the CI variable is set, where it fails: CI must install them (Debian:
`apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge`).

By hand, for a shell: `python -m tests.slurm_cluster` starts one, prints `export SLURM_CONF=...`
and stops it on Ctrl-C.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

# Where Debian puts the daemons; they are not on an ordinary user's PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")
APT_LINE = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"

# Seconds an ended job stays in slurmctld (squeue -t all, scontrol show job) before it is purged;
# the purge runs on its own timer, so a job is seen for MIN_JOB_AGE to about MIN_JOB_AGE + 10 s.
MIN_JOB_AGE = 5
# Seconds between the TERM and the KILL of scancel, a time limit or a requeue.
KILL_WAIT = 5
# A requeued job waits cred_expire + 1 seconds before it may start again: Slurm's default is 120, and
# below 5 slurmstepd rejects the value ("AuthInfo=cred_expire=2 invalid") and the default applies.
CRED_EXPIRE = 5
START_TIMEOUT = 30.0
# Variables of an enclosing Slurm job or the user's defaults would leak into sbatch and squeue.
_CLIENT_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCONTROL_")


def find_binaries() -> dict[str, str | None]:
    """Each daemon and client the cluster needs, with its path or None when it is missing."""
    return {name: shutil.which(name, path=_SEARCH_PATH) for name in DAEMONS + CLIENTS}


def missing_binaries() -> list[str]:
    return [name for name, path in find_binaries().items() if path is None]


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, all different (each socket stays bound until all are chosen)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def probe_node(slurmd: str) -> dict[str, str]:
    """This machine as slurmd sees it (`slurmd -C`): NodeName, CPUs, sockets, cores, RealMemory..."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    first = out.splitlines()[0]
    return dict(item.split("=", 1) for item in first.split() if "=" in item)


def node_line(probe: dict[str, str]) -> str:
    """The NodeName line: this host's layout from slurmd -C, RealMemory 10% under what it reports
    (slurmd drains a node that reports less memory than configured)."""
    memory = max(1, int(int(probe["RealMemory"]) * 0.9))
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    layout = " ".join(f"{key}={probe[key]}" for key in keys if key in probe)
    return f"NodeName={probe['NodeName']} NodeAddr=127.0.0.1 {layout} RealMemory={memory} State=UNKNOWN"


def write_munge_key(path: Path) -> None:
    path.write_bytes(os.urandom(1024))
    path.chmod(0o600)


def slurm_conf(root: Path, *, node: str, node_spec: str, user: str, ctld_port: int, slurmd_port: int) -> str:
    """slurm.conf for one node that needs no systemd, cgroups, accounting database or MPI."""
    return "\n".join([
        "ClusterName=mitorchtest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        f"SlurmUser={user}",
        f"SlurmdUser={user}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root / 'run' / 'munge.sock'},cred_expire={CRED_EXPIRE}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "MailProg=/bin/true",
        "MpiDefault=none",
        # No cgroups or systemd in a container: processes are tracked through /proc.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        # The main loop every 2 s and backfill every 1 s, so a job (or a requeued one) starts
        # within a second or two instead of at the default 60 s tick.
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2,bf_interval=1",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        # `scontrol requeue` needs only JobRequeue; PreemptMode=REQUEUE would need a PreemptType.
        "JobRequeue=1",
        # A node an admin set DOWN stays down until `scontrol update state=resume`.
        "ReturnToService=1",
        f"MinJobAge={MIN_JOB_AGE}",
        f"KillWait={KILL_WAIT}",
        node_spec,
        f"PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def client_env(conf: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(_CLIENT_PREFIXES)}
    env["SLURM_CONF"] = str(conf)
    return env


@dataclass
class SlurmCluster:
    """A running private cluster. `env` (this process's environment, SLURM_CONF pointing at `conf`)
    is for every subprocess that talks to it: sbatch, squeue, the executor under test."""

    root: Path
    conf: Path
    node: str
    env: dict[str, str]
    started_in: float = 0.0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def run(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """One Slurm client command against this cluster; its output as text."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def sbatch(self, *args: str) -> str:
        """Submits with --parsable; the job's id (for an array, the array's id)."""
        out = self.run("sbatch", "--parsable", *args).stdout.strip()
        return out.split(";")[0]

    def node_state(self) -> str:
        """The node's state as sinfo writes it (idle, mixed, allocated, draining, drained, down...),
        without sinfo's suffixes; '' while slurmctld does not answer."""
        done = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False)
        return done.stdout.strip().rstrip("*~#!%$@^-") if done.returncode == 0 else ""

    def wait_node(self, state: str, timeout: float = START_TIMEOUT) -> None:
        """Waits for the node to be in `state`; raises, naming the logs, on timeout or a daemon's exit."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_daemons()
            if (current := self.node_state()) == state:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"slurm node {self.node} is {current or 'unknown'}, not {state}, after {timeout:.0f} s;"
                                   f" see {self.log_dir / 'slurmctld.log'} and {self.log_dir / 'slurmd.log'}")
            time.sleep(0.2)

    def _check_daemons(self) -> None:
        """Raises, naming its logs, when a daemon has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                logs = [str(path) for path in (self.log_dir / f"{name}.log", self.log_dir / f"{name}.out") if path.exists()]
                raise RuntimeError(f"{name} exited with status {process.returncode} while starting; see {' and '.join(logs)}")

    def start_daemon(self, name: str, args: list[str]) -> None:
        with open(self.log_dir / f"{name}.out", "ab") as out:  # the daemon's own stdout and stderr
            self.processes[name] = subprocess.Popen(args, env={**self.env, "MITORCH_SLURM_CLUSTER": str(self.root)},
                                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> list[int]:
        """Cancels every job, stops the daemons (TERM, then KILL after 10 s) and kills any process
        still carrying this cluster's mark; returns the pids it had to kill that way."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "-u", pwd.getpwuid(os.getuid()).pw_name, check=False)
            _wait_until(lambda: not self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip(), KILL_WAIT + 10)
        for name in ("slurmd", "slurmctld", "munged"):  # munged last: the others talk to it on the way out
            if name in self.processes:
                _terminate(self.processes[name])
        strays = cluster_pids(self.root, self.conf)
        for pid in strays:
            _kill(pid)
        return strays


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """predicate()'s first true value, asked every 0.1 s; an AssertionError naming `what` after timeout s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.1)
    return value


def job_fields(cluster: SlurmCluster, job: str) -> dict[str, str]:
    """`scontrol show job` as a dict; {} once Slurm no longer knows the job."""
    done = cluster.run("scontrol", "show", "job", job, check=False)
    return dict(item.split("=", 1) for item in done.stdout.split() if "=" in item) if done.returncode == 0 else {}


def use_cluster(cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Points this process's Slurm clients (an executor's) at the cluster."""
    for key in [key for key in os.environ if key.startswith(_CLIENT_PREFIXES)]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))


def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def cluster_pids(root: Path, conf: Path) -> list[int]:
    """Processes whose environment names this cluster: its daemons, their slurmstepds and jobs."""
    marks = (f"MITORCH_SLURM_CLUSTER={root}".encode(), f"SLURM_CONF={conf}".encode())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(mark in environ for mark in marks):
            pids.append(int(entry.name))
    return pids


def start_cluster(root: Path) -> SlurmCluster:
    """Starts munged, slurmctld and slurmd under `root` and returns once the node is idle. `root`
    must be short (a unix socket's path has at most 107 bytes) and it and every folder above it
    traversable by all: munged refuses a socket below a folder that is not (pytest's basetemp is 0700)."""
    began = time.monotonic()
    binaries = find_binaries()
    if missing := [name for name, path in binaries.items() if path is None]:
        raise RuntimeError(f"slurm binaries missing: {', '.join(missing)}; install them with: {APT_LINE}")
    for sub, mode in (("run", 0o755), ("munge", 0o700), ("state", 0o755), ("spool", 0o755), ("log", 0o755)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub).chmod(mode)
    root.chmod(0o755)
    probe = probe_node(binaries["slurmd"])
    node = probe["NodeName"]
    conf = root / "slurm.conf"
    ctld_port, slurmd_port = free_ports(2)
    conf.write_text(slurm_conf(root, node=node, node_spec=node_line(probe), user=pwd.getpwuid(os.getuid()).pw_name,
                               ctld_port=ctld_port, slurmd_port=slurmd_port))
    cluster = SlurmCluster(root=root, conf=conf, node=node, env=client_env(conf))
    try:
        _start_munged(cluster, binaries["munged"])
        cluster.start_daemon("slurmctld", [binaries["slurmctld"], "-D", "-f", str(conf)])
        cluster.start_daemon("slurmd", [binaries["slurmd"], "-D", "-f", str(conf), "-N", node])
        cluster.wait_node("idle")
    except BaseException:
        cluster.stop()
        raise
    cluster.started_in = time.monotonic() - began
    return cluster


def _start_munged(cluster: SlurmCluster, munged: str) -> None:
    key = cluster.root / "munge" / "munge.key"
    write_munge_key(key)
    sock = cluster.root / "run" / "munge.sock"
    cluster.start_daemon("munged", [
        munged, "--foreground", f"--socket={sock}", f"--key-file={key}",
        f"--pid-file={cluster.root / 'run' / 'munged.pid'}",
        f"--seed-file={cluster.root / 'munge' / 'munged.seed'}"])
    if not _wait_until(lambda: sock.exists() or cluster.processes["munged"].poll() is not None, 10) or not sock.exists():
        raise RuntimeError(f"munged did not create {sock}; see {cluster.log_dir / 'munged.out'}")


def _skip_or_fail(missing: list[str]) -> None:
    reason = f"slurm binaries missing: {', '.join(missing)} (install them with: {APT_LINE})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install them", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest) -> Iterator[SlurmCluster]:
    """A running private cluster for the whole session; every daemon it started is gone afterwards
    (teardown errors naming any process it had to kill). Its folder, logs included, is removed
    unless a test failed."""
    if missing := missing_binaries():
        _skip_or_fail(missing)
    # Not under pytest's basetemp, which munged refuses (see start_cluster).
    root = Path(tempfile.mkdtemp(prefix="mitorch-slurm-"))
    cluster = start_cluster(root)  # on failure the folder stays, for its logs
    try:
        yield cluster
    finally:
        strays = cluster.stop()
    if request.session.testsfailed:
        print(f"\nslurm cluster logs kept in {cluster.log_dir}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    if strays:
        raise RuntimeError(f"processes of the slurm cluster outlived its daemons and were killed: {strays}")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="mitorch-slurm-"))
    cluster = start_cluster(root)
    print(f"slurm cluster up in {cluster.started_in:.1f} s; logs in {cluster.log_dir}")
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
