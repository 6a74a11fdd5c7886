"""Hostile input (numbers no config can hold, deep files, malformed URIs and variables) ends in
one line that names the value, never in a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mitorch.cli._common import parse_command_line
from mitorch.config import compose
from mitorch.errors import ConfigError
from mitorch.store import StoreError, open_store
from tests.conftest import run

HUGE = "9" * 5000  # beyond Python's own 4300-digit limit for reading integers


def _one_line(result, prog: str, message: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and message in lines[0], result.stderr


# -- numbers and intervals in configs ----------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["batch_size=99999999999999999999999"],
     "batch_size must be a whole number from -2**63 to 2**63-1, got 99999999999999999999999"),
    (["batch_size=9223372036854775808"], "batch_size must be a whole number from -2**63 to 2**63-1"),
    ([f"batch_size={HUGE}"], "batch_size must be a whole number from -2**63 to 2**63-1, got 9999"),
    ([f"+extra=[1,{HUGE}]"], "extra holds a whole number beyond 64 bits"),
    (["+extra=[1,{n: 99999999999999999999}]"], "extra[1].n must be a whole number from -2**63 to 2**63-1"),
    (["optimizer.lr=nan"], "optimizer.lr must be a finite number, got nan"),
    (["optimizer.lr=inf"], "optimizer.lr must be a finite number, got inf"),
    (["optimizer.lr=-inf"], "optimizer.lr must be a finite number, got -inf"),
    (["optimizer=adam", "optimizer.betas=[nan,0.999]"], "optimizer.betas[0] must be a finite number, got nan"),
    (["+extra={x: 1e400}"], "extra.x must be a finite number, got inf"),
    (["lr_scheduler.warmup_epochs=-1"], "lr_scheduler.warmup_epochs must be 0 or more, got -1"),
    (["lr_scheduler=step", "lr_scheduler.step_epochs=-5"], "lr_scheduler.step_epochs (the interval between lr steps) "
     "must be more than 0, got -5"),
    (["augmentation.train.min_scale=1.5"], "augmentation.train.min_scale must be in (0, 1]"),
    (["augmentation.train.min_scale=-0.1"], "augmentation.train.min_scale must be in (0, 1]"),
])
def test_numbers_no_config_can_hold_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        compose(overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value) and len(str(error.value)) < 300


def test_the_largest_64_bit_number_is_fine() -> None:
    assert compose(["seed=9223372036854775807"]).seed == 2**63 - 1


# -- config files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, text, message", [
    ("deep.json", '{"a":' * 100_000 + "1" + "}" * 100_000, "nests deeper than 16 levels"),
    ("deep_list.json", '{"a":' + "[" * 100_000 + "]" * 100_000 + "}", "nests deeper than 16 levels"),
    ("deep.yaml", "a: " + "[" * 100_000 + "]" * 100_000, "nests deeper than 16 levels"),
    ("self.yaml", "a: &a [*a]\n", "nests deeper than 16 levels"),
    ("huge.json", '{"batch_size": ' + HUGE + "}", "holds a number beyond 64 bits"),
    ("laughs.yaml", "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{k}: &{k} [{','.join([f'*{p}'] * 10)}]\n" for p, k in zip("abcdefgh", "bcdefghi")),
     "holds more than 100000 values"),
])
def test_hostile_config_files_are_one_line_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as error:
        parse_command_line([str(tmp_path / name)], "mitrain")
    assert message in str(error.value) and name in str(error.value) and "\n" not in str(error.value)


def test_nan_and_huge_numbers_in_a_config_file_are_named(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"optimizer": {"lr": NaN}}')
    with pytest.raises(ConfigError, match="optimizer.lr must be a finite number, got nan"):
        compose(parse_command_line([str(config)], "mitrain").overrides)
    config.write_text('{"batch_size": 123456789012345678901234567890}')
    with pytest.raises(ConfigError, match=r"batch_size must be a whole number from -2\*\*63 to 2\*\*63-1"):
        compose(parse_command_line([str(config)], "mitrain").overrides)


def test_commands_answer_hostile_configs_in_one_line(tmp_path: Path, home: dict) -> None:
    (tmp_path / "deep.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    _one_line(run("mitrain", "deep.json", cwd=tmp_path, env=home), "mitrain", "nests deeper than 16 levels")
    _one_line(run("mitest", "-w", "w.pt", "optimizer.lr=nan", cwd=tmp_path, env=home), "mitest",
              "optimizer.lr must be a finite number, got nan")
    _one_line(run("misubmit", "batch_size=99999999999999999999999", cwd=tmp_path, env=home), "misubmit",
              "batch_size must be a whole number from -2**63 to 2**63-1, got 99999999999999999999999")


# -- the database URI --------------------------------------------------------------------------


@pytest.mark.parametrize("uri, message", [
    ("mongodb://h:99999", "malformed database URI 'mongodb://h:99999' (Port must be an integer between 0 and 65535)"),
    ("mongodb://alice:S3CR3T@h:99999", "malformed database URI 'mongodb://alice:***@h:99999'"),
    ("mongodb://h:port", "malformed database URI 'mongodb://h:port' (Port contains non-digit characters"),
    ("sqlite:///a\x00b", "malformed database URI 'sqlite:///a\\x00b' (embedded null byte)"),
])
def test_a_malformed_database_uri_is_named(uri: str, message: str) -> None:
    with pytest.raises(StoreError) as error:
        open_store(uri)
    assert message in str(error.value) and "S3CR3T" not in str(error.value)


def test_commands_name_a_malformed_database_uri(tmp_path: Path, home: dict) -> None:
    result = run("midataset", "list", cwd=tmp_path, env={**home, "MITORCH_DB_URI": "mongodb://u:S3CR3T@h:99999"})
    _one_line(result, "midataset", "malformed database URI 'mongodb://u:***@h:99999'")
    assert "S3CR3T" not in result.stderr


# -- MITORCH_* variables -----------------------------------------------------------------------


@pytest.mark.parametrize("variable, value, message", [
    ("MITORCH_TRANSFER_RETRIES", "many", "MITORCH_TRANSFER_RETRIES must be a whole number, got 'many'"),
    ("MITORCH_TRANSFER_RETRIES", "-1", "MITORCH_TRANSFER_RETRIES must be 0 or more, got -1"),
    ("MITORCH_TRANSFER_BACKOFF_S", "nan", "MITORCH_TRANSFER_BACKOFF_S must be a finite number, got 'nan'"),
    ("MITORCH_TRANSFER_BACKOFF_S", "-2", "MITORCH_TRANSFER_BACKOFF_S must be 0 or more, got -2"),
])
def test_transfer_settings_are_checked(home: dict, monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                       message: str) -> None:
    from mitorch.files import remote

    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        remote.fetch("http://127.0.0.1:9/never-reached.txt")
    assert str(error.value) == message


# -- dataset versions --------------------------------------------------------------------------


def test_dataset_versions_beyond_64_bits_are_one_line_errors(tmp_path: Path, home: dict) -> None:
    (tmp_path / "t.txt").write_text("")
    entry = {"name": "x", "version": 2**63, "train": {"path": "t.txt"}, "val": {"path": "t.txt"}}
    (tmp_path / "big.json").write_text(json.dumps([entry]))
    _one_line(run("midataset", "register", "big.json", cwd=tmp_path, env=home), "midataset",
              "version must be a whole number from 0 to 2**63-1, got 9223372036854775808")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line(run("midataset", "register", "deep.json", cwd=tmp_path, env=home), "midataset", "nests too deeply")
    _one_line(run("midataset", "show", "x", "--version", "99999999999999999999", cwd=tmp_path, env=home),
              "midataset", "--version: the version must be a whole number from 0 to 2**63-1, got "
              "'99999999999999999999'")
    _one_line(run("misubmit", "--dataset", "x:-1", cwd=tmp_path, env=home), "misubmit",
              "--dataset x: the version must be a whole number from 0 to 2**63-1, got '-1'")


# -- search spaces: ranges are counted, never listed ----------------------------------------------


def _peak_bytes(work) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_range_is_counted_from_its_bounds_not_listed() -> None:
    from optuna.distributions import IntDistribution

    from mitorch.service.search.space import check_points, distributions

    space: dict = {}
    # Listed, 4 million values would take well over 100 MB; counted, a few kB.
    assert _peak_bytes(lambda: space.update(distributions({"seed": "range(0, 4000000)"}))) < 5_000_000
    assert space["seed"] == IntDistribution(0, 3_999_999)
    assert _peak_bytes(lambda: check_points(space)) < 5_000_000
    assert distributions({"seed": f"range(1, {2**63 - 1})"})["seed"] == IntDistribution(1, 2**63 - 2)
    assert distributions({"seed": "range(10, 0, -3)"})["seed"] == IntDistribution(1, 10, step=3)  # 10, 7, 4, 1


@pytest.mark.parametrize("text, values", [
    ("range(0, 0.9, 0.3)", [0.0, 0.3, 0.6]),
    # Hydra's own listing steps in the floats' binary values and gives a fourth value just short of
    # the end (0.4 less 2e-17, 2.1 less 4e-16): written as decimals, the end is excluded.
    ("range(0.1, 0.4, 0.1)", [0.1, 0.2, 0.3]),
    ("range(0, 2.1, 0.7)", [0.0, 0.7, 1.4]),
    ("range(0, 1, 0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
    ("range(0, 0.7, 0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
    ("range(1.5, -1.5, -0.5)", [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]),
    ("range(0.25, 1)", [0.25]),
])
def test_a_float_range_holds_the_decimals_written_short_of_its_end(text: str, values: list[float]) -> None:
    from mitorch.service.search.space import distributions, sampler_grid

    space = distributions({"x": text})
    assert (space["x"].low, space["x"].high) == (values[0], values[-1])
    assert sampler_grid(space)["x"] == values


@pytest.mark.parametrize("space, message", [
    ({"seed": "range(1, 99999999999999999999999)"}, "goes beyond 64-bit whole numbers"),
    ({"seed": "range(0, 10, 0)"}, "cannot be a range (its step is 0)"),
    ({"x": "range(0, inf, 1.0)"}, "cannot be a range (its numbers must be finite)"),
    ({"x": "range(0, 1e300, 1e-300)"}, "holds more than 2**53 values"),
    ({"optimizer.lr": "interval(0, inf)"}, "needs finite bounds"),
    ({"optimizer.lr": "interval(0, nan)"}, "needs finite bounds"),
    ({"seed": "tag(int, interval(0, 1e30))"}, "goes beyond 64-bit whole numbers"),
    ({"seed": "choice(" + "[" * 2000 + "]" * 2000 + ")"}, "search_space.seed nests deeper than 16 levels"),
    ({"seed": {"nested": "range(0, 2)"}}, "search_space.seed must be a sweep such as choice(a, b)"),
    ({"x": ",".join(map(str, range(1001)))}, "more than 1000 choices in all"),
    ({"x": "a," + "b" * 5000}, "search_space.x holds a value of 5002 characters, more than 4096"),
])
def test_a_space_that_costs_more_than_it_says_is_refused(space: dict, message: str) -> None:
    from mitorch.service.search.space import distributions

    with pytest.raises(ConfigError) as error:
        distributions(space)
    assert message in str(error.value) and "\n" not in str(error.value) and len(str(error.value)) < 400


def test_a_grid_is_capped_before_it_is_listed() -> None:
    from mitorch.service.search.job import settings
    from mitorch.service.search.space import MAX_GRID_POINTS, distributions, sampler_grid

    huge = distributions({"seed": "range(0, 4000000000000)", "model": "resnet,mobilenet_v3"})
    with pytest.raises(ConfigError, match=f"grid holds more than {MAX_GRID_POINTS} points"):
        sampler_grid(huge)  # what --add-trials on a grid job asks
    job = {"job_type": "search", "search_space": {"seed": "range(0, 5001)", "model": "resnet,mobilenet_v3"},
           "sampler": "grid"}
    with pytest.raises(ConfigError, match=f"grid holds more than {MAX_GRID_POINTS} points"):
        settings(job, "multiclass_classification")
    assert settings({**job, "search_space": {"seed": "range(0, 5000)", "model": "resnet,mobilenet_v3"}},
                    "multiclass_classification")["n_trials"] == 20


# -- misubmit, miquery, midataset: one line, nothing stored ------------------------------------------


def _deep_space(suffix: str) -> str:
    if suffix == ".json":
        return '{"job_type": "search", "search_space": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}"
    return "job_type: search\nsearch_space: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n"


_SAS = "sv=2024-01-01&sig=S3CR3TS3CR3T"
_JOB_FILES = {
    "list.yaml": "job_type: search\nsearch_space: [optimizer.lr, batch_size]\n",
    "objective.yaml": "job_type: search\nsearch_space: {optimizer.lr: 'interval(0.01, 0.1)'}\nobjective: loss\n",
    "deep.yaml": _deep_space(".yaml"),
    "deep.json": _deep_space(".json"),
    "config.json": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "named.yaml": "job_type: search\nsearch_space: {optimizer.lr: 'interval(0.01, 0.1)'}\n"
                  f"name: 'lr https://acct.blob.core.windows.net/c/x?{_SAS}'\n",
    "seed.yaml": "job_type: search\nsearch_space: {optimizer.lr: 'interval(0.01, 0.1)'}\n"
                 "sampler: {name: random, seed: abc}\n",
    "empty.yaml": "job_type: search\nconfig: ''\nsearch_space: {optimizer.lr: 'interval(0.01, 0.1)'}\n",
}


@pytest.mark.parametrize("argv, code, message", [
    (["list.yaml"], 1, "search_space must map config keys to Hydra sweeps"),
    (["objective.yaml"], 1, "objective must be a mapping, e.g. objective: {metric: loss, direction: minimize}"),
    (["--search", "optimizer.lr=interval(0, inf)"], 1, "search_space.optimizer.lr: interval(0, inf) needs finite"),
    (["--search", "optimizer.lr=interval(0, nan)"], 1, "search_space.optimizer.lr: interval(0, nan) needs finite"),
    (["deep.yaml"], 1, "config file deep.yaml nests deeper than 16 levels"),
    (["deep.json"], 1, "config file deep.json nests deeper than 16 levels"),
    (["config.json", "max_epochs=1"], 1, "config file config.json nests deeper than 16 levels"),
    (["named.yaml"], 1, "name carries a credential"),
    (["seed.yaml"], 1, "sampler.seed must be a whole number from 0 to 2**32-1, got 'abc'"),
    (["empty.yaml"], 1, "config is empty; give a training-config file's path"),
    (["--add-trials", "99999999999999999999999", "0123456789abcdef01234567"], 2, "--add-trials must fit in 64 bits"),
    (["--add-trials", str(2**63 - 1), "0123456789abcdef01234567"], 2, "--add-trials adds at most 100000 trials"),
    (["--add-trials", "1", "a" * 100_000], 2, "JOB_ID must be a training or job id"),
    (["-m", "--search", "optimizer.lr=interval(0.01, 0.1)"], 2, "use one of them"),
    (["--search", "optimizer.lr=interval(0.01, 0.1)", "--multirun"], 2, "use one of them"),
    (["-m", "base=0123456789abcdef01234567", "max_epochs=1,2"], 1,
     "base training 0123456789abcdef01234567 is not in the job store"),
    (["-m", "seed=range(0, 99999999999999999999)"], 1, "-m: seed sweeps 99999999999999999999 values, more than 1000"),
    (["-m", "seed=range(0, 40)", "optimizer.lr=range(0, 1, 0.02)"], 1, "-m: the sweep makes 2000 runs, more than"),
    (["-m", "optimizer.lr=interval(0.01, 0.1)"], 1, "interval(...) is for a search: misubmit --search"),
    (["+model.foo=1"], 1, "unknown key 'model.foo'; valid keys at 'model': depth"),
    (["data.train=/missing/train.txt", "data.val=/missing/val.txt"], 1,
     "data.train /missing/train.txt does not exist; give a path that exists, or register the data with midataset"),
    (["-m", "max_epochs=1,2", "weights=/missing/w.pt"], 1, "weights /missing/w.pt does not exist"),
    (["data.train=", "data.val=x.txt"], 1, "data.train is empty"),
    (["+note=" + "a" * 100_000], 1, "+note holds a value of 100000 characters, more than 4096"),
    (["a." * 10_000 + "b=1"], 1, "is a key of 20001 characters, more than 256"),
    (["+note=" + "[" * 1000 + "]" * 1000], 1, "note nests deeper than 16 levels"),
    (["base=../../etc"], 1, "base must be a training id (24 hex digits, see miquery), got '../../etc'"),
    (["--search", "+note=choice(a, b)"], 1, "search_space point +note='a': unknown key '+note'"),
    (["--search", "seed=range(0, 4000000000000)", "--sampler", "grid"], 1, "grid holds more than 10000 points"),
])
def test_misubmit_refuses_bad_input_in_one_line_and_stores_nothing(tmp_path: Path, home: dict, monkeypatch,
                                                                  capsys, argv: list[str], code: int,
                                                                  message: str) -> None:
    from mitorch.cli import misubmit
    from mitorch.store.sqlite import SQLiteStore

    monkeypatch.chdir(tmp_path)
    for name, text in _JOB_FILES.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit) as exited:
        misubmit.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("misubmit: error: ") and message in lines[0], lines
    assert exited.value.code == code and len(lines[0]) < 500 and "S3CR3T" not in lines[0]
    store = SQLiteStore(tmp_path / "db.sqlite")
    assert store.list_trainings() == [] and store.list_jobs() == []


@pytest.mark.parametrize("status, fields, message", [
    ("failed", {}, "is failed; base starts from a completed training's weights: choose a completed training"),
    ("cancelled", {}, "is cancelled"),
    ("new", {}, "is new; base starts from a completed training's weights: submit this training once it has"),
    ("completed", {}, "is completed without weights"),
])
def test_misubmit_refuses_a_base_that_has_no_weights_to_give(tmp_path: Path, home: dict, monkeypatch, capsys,
                                                             status: str, fields: dict, message: str) -> None:
    from mitorch.cli import misubmit
    from mitorch.store.sqlite import SQLiteStore

    monkeypatch.chdir(tmp_path)
    store = SQLiteStore(tmp_path / "db.sqlite")
    base = store.add_training({"config": {}, "priority": 100, "dataset": None, "status": status, **fields})
    for argv in ([f"base={base}"], ["-m", f"base={base}", "max_epochs=1,2"]):
        with pytest.raises(SystemExit):
            misubmit.main(argv)
        err = capsys.readouterr().err
        assert err == f"misubmit: error: base training {base} {message}" + err.split(message, 1)[1]
        assert len(err.strip().splitlines()) == 1
    assert [t["id"] for t in store.list_trainings()] == [base] and store.list_jobs() == []


def test_misubmit_takes_a_base_with_weights_and_data_that_exist(tmp_path: Path, home: dict, monkeypatch,
                                                                capsys) -> None:
    from mitorch.cli import misubmit
    from mitorch.store.sqlite import SQLiteStore

    monkeypatch.chdir(tmp_path)
    store = SQLiteStore(tmp_path / "db.sqlite")
    base = store.add_training({"config": {}, "priority": 100, "dataset": None, "status": "completed",
                               "weights": str(tmp_path / "model.pt")})
    (tmp_path / "train.txt").write_text("")
    (tmp_path / "val.txt").write_text("")
    misubmit.main([f"base={base}", "data.train=train.txt", "data.val=val.txt"])
    training = store.get_training(capsys.readouterr().out.strip())
    assert training["config"]["base"] == base and training["config"]["data"]["train"] == str(tmp_path / "train.txt")


@pytest.mark.parametrize("prog, argv, message", [
    ("miquery", ["a" * 100_000], "ID must be a training or job id (24 hex digits; at most 64 letters"),
    ("miquery", ["0123/../x"], "ID must be a training or job id"),
    ("midataset", ["show", "a" * 100_000], "NAME: a dataset name has at most 128 characters, got 100000"),
    ("misubmit", ["--add-trials", "1", "a" * 65], "JOB_ID must be a training or job id"),
    ("misubmit", ["--dataset", "a" * 100_000], "--dataset: a dataset name has at most 128 characters"),
])
def test_ids_and_names_too_long_to_be_one_are_refused_before_the_store_is_asked(home: dict, monkeypatch, capsys,
                                                                                prog: str, argv: list[str],
                                                                                message: str) -> None:
    import importlib

    import mitorch.store

    def asked(*args, **kwargs):
        raise AssertionError("the store was asked")

    monkeypatch.setattr(mitorch.store, "open_store", asked)
    with pytest.raises(SystemExit):
        importlib.import_module(f"mitorch.cli.{prog}").main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and message in lines[0], lines
    assert len(lines[0]) < 300


def test_midataset_refuses_an_empty_path(tmp_path: Path, home: dict, capsys) -> None:
    from mitorch.cli import midataset

    (tmp_path / "t.txt").write_text("")
    entry = {"name": "x", "version": 0, "train": {"path": ""}, "val": {"path": "t.txt"}}
    (tmp_path / "empty.json").write_text(json.dumps([entry]))
    with pytest.raises(SystemExit):
        midataset.main(["register", str(tmp_path / "empty.json")])
    assert capsys.readouterr().err.strip() == (f"midataset: error: dataset file {tmp_path / 'empty.json'}, x: train: "
                                               "a path is empty; give the split's file or folder, or an https URL")
    assert open_store().list_datasets() == []


def test_miquery_shows_a_registered_datasets_name_and_version(tmp_path: Path, home: dict, monkeypatch,
                                                              capsys) -> None:
    from mitorch.cli import miquery

    monkeypatch.setenv("COLUMNS", "200")
    store = open_store()
    training_id = store.add_training({"config": {"data": {"train": None}}, "priority": 100,
                                      "dataset": {"name": "shapes", "version": 3}})
    for argv in ([], [training_id]):
        miquery.main(argv)
        out = capsys.readouterr().out
        assert "dataset shapes:3" in out and "built-in" not in out


# -- a search job's name and points ---------------------------------------------------------------


def test_a_search_jobs_name_is_screened_for_credentials() -> None:
    from mitorch.service.search.job import settings

    job = {"job_type": "search", "search_space": {"optimizer.lr": "interval(0.01, 0.1)"}}
    assert settings({**job, "name": "lr sweep"}, "multiclass_classification")["name"] == "lr sweep"
    for name, message in ((f"see https://acct.blob.core.windows.net/c?{_SAS}", "name carries a credential (sig=***)"),
                          ("x" * 201, "name must be one line of text of 1 to 200 characters, got a string of 201"),
                          ("two\nlines", "name must be one line of text"), (["a"], "got a list")):
        with pytest.raises(ConfigError) as error:
            settings({**job, "name": name}, "multiclass_classification")
        assert message in str(error.value) and "S3CR3T" not in str(error.value)


def test_a_space_composes_at_submit_exactly_as_at_the_tick(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from mitorch.config import compose, compose_with_values, merge
    from mitorch.service.search.job import prepare
    from mitorch.service.search.space import check_points, distributions, param_overrides
    from mitorch.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "db.sqlite")
    job = {"job_type": "search", "overrides": ["max_epochs=1", "logger=[mlflow]"]}
    # Hydra's compose adds +note; the tick's compose_with_values cannot: refused at submit.
    with pytest.raises(ConfigError, match=r"^search_space point \+note='a': unknown key '\+note'"):
        prepare({**job, "search_space": {"+note": "choice(a, b)"}}, store, str(tmp_path))
    assert store.list_jobs() == []
    values = {"optimizer.lr": "tag(log, interval(1e-4, 1e-1))", "batch_size": "range(4, 17, 4)",
              "logger.mlflow.tags.team": "choice(a, b)"}
    for space in (values, {**values, "model": "resnet,mobilenet_v3"}):  # set in place; a group: composed anew
        record = prepare({**job, "search_space": space}, store, str(tmp_path))
        for point in check_points(distributions(space)):
            tick = compose_with_values(record["base_overrides"], point)
            submit = compose(merge(record["base_overrides"], param_overrides(point)))
            assert OmegaConf.to_container(tick) == OmegaConf.to_container(submit)
