"""mitrain -m with Hydra's submitit launcher (hydra/launcher=submitit_slurm): a sweep's runs as Slurm
jobs on the private test cluster, which keeps no accounting (sacct answers nothing), as many small
clusters do; and the one-line error when the plugin (the slurm extra) is not installed."""
from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, QUICK, make_text_dataset, run_in_process
from tests.helpers import validation_metrics
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 (the fixture)


def _sweep(cluster: SlurmCluster, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """mitrain -m on the cluster, from tmp_path (which holds data/), one CPU and a few minutes a run."""
    make_text_dataset(tmp_path / "data", num_train=16, num_val=8)
    command = [str(BIN / "mitrain"), "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=main",
               "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1",
               f"hydra.launcher.submitit_folder={tmp_path / 'submitit'}/%j", "hydra.sweep.dir=sweep",
               "data.train=data/train.txt", *QUICK, *overrides]
    # cluster.env: this environment, SLURM_CONF naming the test cluster; the jobs inherit it.
    return subprocess.run(command, cwd=tmp_path, env={**cluster.env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_sweep_runs_each_value_as_a_slurm_job_and_keeps_its_results(slurm_cluster: SlurmCluster,
                                                                     tmp_path: Path) -> None:
    done = _sweep(slurm_cluster, tmp_path, "optimizer.lr=0.1,0.01", "data.val=data/val.txt")
    assert done.returncode == 0, done.stderr
    runs = {}
    for num in (0, 1):
        run_dir = tmp_path / "sweep" / str(num)
        hydra = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
        lr = next(o for o in hydra["overrides"]["task"] if o.startswith("optimizer.lr="))
        runs[lr] = run_dir, hydra["job"]["id"]
    assert set(runs) == {"optimizer.lr=0.1", "optimizer.lr=0.01"}
    controller_log = (slurm_cluster.log_dir / "slurmctld.log").read_text()
    for run_dir, job in runs.values():
        # Each run was a task of one Slurm job array, which Slurm started.
        assert re.fullmatch(r"\d+_[01]", job), job
        assert re.search(rf"_start_job: Started JobId={job}\(\d+\)", controller_log), job
        # Its validation results in its run folder, its metrics line in its Slurm job's log, and
        # the same metrics back in mitrain's process as the run's return value (Hydra's JobReturn).
        validation = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["val"]
        assert validation["num_samples"] == 8
        printed = json.loads(_metrics_line(tmp_path / "submitit" / job / f"{job}_0_log.out"))
        assert validation_metrics(printed) == validation and printed["num_parameters"] > 0  # and its costs
        outcome, returned = pickle.loads((tmp_path / "submitit" / job / f"{job}_0_result.pkl").read_bytes())
        assert outcome == "success" and returned.return_value == printed


def _metrics_line(log: Path) -> str:
    """The JSON line mitrain printed last in a job's stdout (submitit adds its own lines after it)."""
    return [line for line in log.read_text().splitlines() if line.startswith("{")][-1]


@pytest.mark.slow
def test_a_failed_run_ends_the_sweep_with_its_error(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Without accounting, a run's job that exits without a result would leave mitrain waiting: the
    error comes back from the job instead, and mitrain ends with it as one line."""
    done = _sweep(slurm_cluster, tmp_path, "data.val=data/missing.txt")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("mitrain: error: dataset not found: "), done.stderr
    assert "Traceback" not in done.stderr
    [log] = (tmp_path / "submitit").glob("*/*_0_log.err")
    assert "mitrain: error: dataset not found: " in log.read_text()


def test_the_submitit_launcher_without_its_plugin_names_the_extra(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)  # as if not installed
    done = run_in_process("mitrain", "-m", "hydra/launcher=submitit_slurm", "optimizer.lr=0.1,0.01", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == ("mitrain: error: hydra/launcher=submitit_slurm needs Hydra's submitit launcher: "
                           "pip install 'mitorch[slurm]'\n")
    assert not list(tmp_path.iterdir())
