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
    from mitorch.service import remote

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
