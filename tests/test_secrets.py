"""Secrets: every credential form is hidden wherever it is shown, refused in every config key,
kept per blob in an owner-only credentials file that parallel registrations share safely, and
stored strings never reach Rich as markup."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mitorch.cli._common import check_overrides, parse_command_line
from mitorch.config import compose
from mitorch.errors import ConfigError
from mitorch.files import credentials
from mitorch.files.secrets import carries_credential, credential_forms, redact
from tests.helpers import make_text_dataset, run, run_in_process

ACCOUNT_URL = "https://acct.blob.core.windows.net"


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, shown", [
    ("mongodb://u:p@ss@host/db", "mongodb://u:***@host/db"),  # a raw '@' inside the password
    ("mongodb+srv://bob:p%40ss@cluster.example.net/db?retryWrites=true",
     "mongodb+srv://bob:***@cluster.example.net/db?retryWrites=true"),
    ("mongodb://u:hunter2@h1:27017,h2:27017/db", "mongodb://u:***@h1:27017,h2:27017/db"),
    (f"{ACCOUNT_URL}/c/a.zip?sv=2022-11-02&sr=b&sig=c2VjcmV0%3D&se=2030",
     f"{ACCOUNT_URL}/c/a.zip?sv=2022-11-02&sr=b&sig=***&se=2030"),
    ("sv=2022-11-02&ss=b&sig=c2VjcmV0", "sv=2022-11-02&ss=b&sig=***"),  # a bare SAS token
    ("https://h/x?token=s3cr3t&page=2", "https://h/x?token=***&page=2"),
    ("https://h/x?access_token=s3cr3t", "https://h/x?access_token=***"),
    ("https://h/x?api_key=s1&apikey=s2&key=s3", "https://h/x?api_key=***&apikey=***&key=***"),
    ("https://h/x?password=s1&secret=s2&client_secret=s3&code=s4",
     "https://h/x?password=***&secret=***&client_secret=***&code=***"),
    ("https://b.s3.amazonaws.com/k.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAS3CR3T%2F20240101"
     "&X-Amz-Security-Token=S3CR3TTOKEN&X-Amz-Signature=5ec7e7",
     "https://b.s3.amazonaws.com/k.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Security-Token=***&X-Amz-Signature=***"),
    ("https://storage.googleapis.com/b/o?X-Goog-Credential=sa%40p.iam&X-Goog-Signature=5ec7e7",
     "https://storage.googleapis.com/b/o?X-Goog-Credential=***&X-Goog-Signature=***"),
    ("https://app.example.com/callback#access_token=s3cr3t&state=1", "https://app.example.com/callback#***"),
    ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=s3cr3t==;EndpointSuffix=core.windows.net",
     "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***;EndpointSuffix=core.windows.net"),
    ('{"db": "mongodb://u:s3cr3t@h/db", "mail": "a@b.c"}', '{"db": "mongodb://u:***@h/db", "mail": "a@b.c"}'),
])
def test_every_credential_form_is_redacted(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert carries_credential(text)


@pytest.mark.parametrize("text", ["mongodb://host:27017/db", "https://h/x.txt?page=2&sort=name", "a@b.c",
                                  "/data/train.txt", "https://user@h/x", "mongodb://h:99999",
                                  "optimizer.lr=0.1 momentum=0.9", "monkey=1 tokens=5 keyboard=us db.lr=2"])
def test_values_without_a_credential_are_shown_as_they_are(text: str) -> None:
    assert redact(text) == text and not carries_credential(text)


@pytest.mark.parametrize("text, shown", [
    ("AuthenticationFailed: AccountKey=c2VjcmV0== is not valid", "AuthenticationFailed: AccountKey=*** is not valid"),
    ("BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&ss=b&sig=S3CR3T",
     "BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=***&ss=b&sig=***"),
    ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=S3CR3T",
     "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=***"),
    ("request refused (X-Amz-Signature=5ec7e7 has expired)", "request refused (X-Amz-Signature=*** has expired)"),
    ("upload failed: sig=S3CR3T was rejected", "upload failed: sig=*** was rejected"),
    ("login failed for password=hunter2, user=bob", "login failed for password=*** user=bob"),
    ("oauth error: client_secret=S3CR3T refused\nretrying", "oauth error: client_secret=*** refused\nretrying"),
    ("Server=db;User ID=bob;Pwd=S3CR3T;", "Server=db;User ID=bob;Pwd=***;"),
])
def test_a_bare_credential_anywhere_in_a_text_is_redacted(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert carries_credential(text) and credential_forms(text)


# A credential of every form, hidden the same way whatever surrounds it.
_CREDENTIALS = " https://u:S3CR3T@h/x?sv=1&sig=S3CR3T#S3CR3T AccountKey=S3CR3T "
_CREDENTIALS_SHOWN = " https://u:***@h/x?sv=1&sig=***#*** AccountKey=*** "
_HALF_MB = 500_000


class _Hung(Exception):
    pass


@pytest.fixture
def hang_guard():
    """Fails the test when it runs past 20 s. An alarm, not a thread: a regular expression holds
    the GIL until it ends (hours when quadratic), but the engine stops for signals."""
    def hung(signum: int, frame: object) -> None:
        raise _Hung("redaction of 1 MB did not end within 20 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)  # a second or two when linear
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("piece", ["a", "7", "a=", "=", "a://", "#", "x_", "a1.", "u:"],
                         ids=["letters", "digits", "key-value pairs", "equals", "schemes", "hashes", "key parts",
                              "scheme runs", "colons"])
def test_redaction_takes_linear_time_on_hostile_text(piece: str, hang_guard: None) -> None:
    filler = piece * (_HALF_MB // len(piece))
    text = filler + _CREDENTIALS + filler  # 1 MB
    assert redact(text) == filler + _CREDENTIALS_SHOWN + filler
    assert set(credential_forms(text)) == {":***@", "sig=***", "#***", "AccountKey=***"}
    assert carries_credential(text)


# -- refused in configs ------------------------------------------------------------------------


@pytest.mark.parametrize("override, key, form, secret", [
    ("data.train='https://h/t.txt?sv=1&sig=S3CR3T'", "data.train", "sig=***", "S3CR3T"),
    ("+extra='https://h/x?token=S3CR3T'", "extra", "token=***", "S3CR3T"),
    ("+extra.db='mongodb://u:p@ssS3CR3T@h/db'", "extra.db", ":***@", "S3CR3T"),
    ("+urls=[1,{a: 'https://b.s3.amazonaws.com/k?X-Amz-Signature=S3CR3T'}]", "urls[1].a", "X-Amz-Signature=***",
     "S3CR3T"),
    ("+cb='https://h/cb#access_token=S3CR3T'", "cb", "access_token=***", "S3CR3T"),
    ("weights='https://storage.googleapis.com/b/w.pt?X-Goog-Signature=S3CR3T'", "weights", "X-Goog-Signature=***",
     "S3CR3T"),
])
def test_a_value_with_a_credential_is_refused_in_any_key(override: str, key: str, form: str, secret: str) -> None:
    with pytest.raises(ConfigError) as refused:
        compose([override])
    message = str(refused.value)
    assert message.startswith(f"{key} carries a credential (") and form in message
    assert secret not in message and "\n" not in message


def test_a_credential_in_a_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"batch_size": 8, "data": {"train": f"{ACCOUNT_URL}/c/t.txt?sv=1&sig=S3CR3T",
                                                            "val": f"{ACCOUNT_URL}/c/v.txt?sv=1&sig=S3CR3T"}}))
    command = parse_command_line([str(config)], "mitrain")
    with pytest.raises(ConfigError, match=r"^data\.(train|val) carries a credential \(sig=\*\*\*\)") as refused:
        check_overrides(command.overrides, multirun=False)
    assert "S3CR3T" not in str(refused.value)


def test_each_value_of_a_sweep_is_screened() -> None:
    with pytest.raises(ConfigError, match=r"^extra carries a credential \(token=\*\*\*\)"):
        check_overrides(["+extra='a','https://h/x?token=S3CR3T'"], multirun=True)


def test_submission_refuses_a_config_with_a_credential(tmp_path: Path) -> None:
    from mitorch.service.submit import submission
    from mitorch.store.sqlite import SQLiteStore

    cfg = compose(["+note=plain"])
    OmegaConf.update(cfg, "note", "https://h/x?sig=S3CR3T")  # past the override screen
    with pytest.raises(ConfigError, match=r"^note carries a credential \(sig=\*\*\*\)") as refused:
        submission(cfg, SQLiteStore(tmp_path / "db.sqlite"))
    assert "S3CR3T" not in str(refused.value)


def test_misubmit_and_mitrain_refuse_a_credential_in_one_line(tmp_path: Path, home: dict) -> None:
    from mitorch.store.sqlite import SQLiteStore

    config = tmp_path / "config.yaml"
    config.write_text("extra_urls:\n  weights: https://h/w.pt?X-Amz-Signature=S3CR3T\n")
    for prog, args, key in [("misubmit", ["+extra='https://h/x?sv=1&sig=S3CR3T'"], "extra"),
                            ("mitrain", [str(config)], "extra_urls.weights")]:
        result = run(prog, *args, cwd=tmp_path, env=home)
        assert result.returncode != 0
        assert result.stderr.startswith(f"{prog}: error: {key} carries a credential (")
        assert len(result.stderr.strip().splitlines()) == 1 and "S3CR3T" not in result.stderr
    unquoted = run("misubmit", "data.train=https://h/t.txt?sig=S3CR3T", cwd=tmp_path, env=home)
    assert "quote a value" in unquoted.stderr and "S3CR3T" not in unquoted.stderr
    assert SQLiteStore(tmp_path / "db.sqlite").list_trainings() == []


def test_an_error_quoting_a_credential_is_printed_without_it(capsys: pytest.CaptureFixture) -> None:
    from mitorch.files.secrets import fail
    from mitorch.errors import MiTorchError

    with pytest.raises(SystemExit):
        fail("mitrain", MiTorchError("cannot open https://h/x?sv=1&sig=S3CR3T\nor mongodb://u:p@S3CR3T@h/db"))
    assert capsys.readouterr().err == "mitrain: error: cannot open https://h/x?sv=1&sig=*** or mongodb://u:***@h/db\n"


# -- the credentials file ----------------------------------------------------------------------


def test_per_blob_tokens_are_kept_per_blob_and_container_tokens_per_container(home: dict) -> None:
    first = credentials.remember(f"{ACCOUNT_URL}/data/a.zip?sv=1&sr=b&sig=AAA")
    second = credentials.remember(f"{ACCOUNT_URL}/data/b.zip?sv=1&sr=b&sig=BBB")
    assert (first, second) == (f"{ACCOUNT_URL}/data/a.zip", f"{ACCOUNT_URL}/data/b.zip")
    assert credentials.sas_for(first) == "sv=1&sr=b&sig=AAA"
    assert credentials.sas_for(second) == "sv=1&sr=b&sig=BBB"
    assert credentials.sas_for(f"{ACCOUNT_URL}/data/c.zip") is None  # a blob token opens no other blob

    credentials.remember(f"{ACCOUNT_URL}/data/labels.txt?sv=1&sr=c&sig=CCC")
    assert credentials.sas_for(f"{ACCOUNT_URL}/data/c.zip") == "sv=1&sr=c&sig=CCC"  # the container's
    assert credentials.sas_for(first) == "sv=1&sr=b&sig=AAA"  # the blob's own still wins
    assert os.stat(home["MITORCH_CREDENTIALS"]).st_mode & 0o777 == 0o600


_REGISTER_WHEN_TOLD = """
import os, sys, time
from mitorch.cli import midataset
from mitorch.files import datasets  # everything imported before the start, so the updates race
os.umask(0)  # the file's mode must not depend on the umask
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
midataset.main(["register", sys.argv[1]])
"""


def test_parallel_registrations_keep_every_token_in_an_owner_only_file(tmp_path: Path, home: dict) -> None:
    racers, blobs = 8, 6

    def url(i: int, split: str, n: int) -> str:
        return f"{ACCOUNT_URL}/shared/set{i}/{split}{n}.txt?sv=2024-01-01&sr=b&sp=r&sig=TOKEN-{i}-{split}-{n}"

    processes = []
    for i in range(racers):
        entry = {"name": f"set{i}", "version": 0}
        for split in ("train", "val"):
            entry[split] = {"path": url(i, split, 0), "support_files": [url(i, split, n) for n in range(1, blobs)]}
        (tmp_path / f"set{i}.json").write_text(json.dumps([entry]))
        env = {**os.environ, **home, "MITORCH_DB_URI": f"sqlite:///{tmp_path / f'db{i}.sqlite'}"}
        processes.append(subprocess.Popen([sys.executable, "-c", _REGISTER_WHEN_TOLD, str(tmp_path / f"set{i}.json"),
                                           str(tmp_path / "go")], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    (tmp_path / "go").touch()  # all eight start their updates together
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err

    kept = json.loads(Path(home["MITORCH_CREDENTIALS"]).read_text())["sas"]
    expected = {url(i, s, n).split("?")[0]: url(i, s, n).split("?")[1]
                for i in range(racers) for s in ("train", "val") for n in range(blobs)}
    assert kept == expected
    assert os.stat(home["MITORCH_CREDENTIALS"]).st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.glob("creds.json*")) == ["creds.json", "creds.json.lock"]  # no leftovers


# -- stored strings shown as text --------------------------------------------------------------


def test_markup_in_stored_strings_is_shown_as_text(tmp_path: Path, home: dict) -> None:
    data = make_text_dataset(tmp_path / "data")
    entries = [{"name": name, "version": 0, "description": "[/] [bold]not bold[/bold] [red",
                "train": {"path": str(data.train)}, "val": {"path": str(data.val)}}
               for name in ("x[/y]", "[bold]b[/bold]")]
    (tmp_path / "datasets.json").write_text(json.dumps(entries))
    assert run_in_process("midataset", "register", "datasets.json", cwd=tmp_path, env=home).returncode == 0

    listed = run_in_process("midataset", "list", cwd=tmp_path, env={**home, "COLUMNS": "250"})
    assert listed.returncode == 0, listed.stderr
    assert "x[/y]" in listed.stdout and "[bold]b[/bold]" in listed.stdout
    shown = run_in_process("midataset", "show", "x[/y]", cwd=tmp_path, env={**home, "COLUMNS": "250"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("x[/y] version 0") and "[/] [bold]not bold[/bold] [red" in shown.stdout


def test_a_password_outside_the_query_is_not_registered(tmp_path: Path, home: dict) -> None:
    data = make_text_dataset(tmp_path / "data")
    entry = {"name": "x", "version": 0, "train": {"path": "https://u:S3CR3T@h/t.txt"}, "val": {"path": str(data.val)}}
    (tmp_path / "datasets.json").write_text(json.dumps([entry]))
    result = run_in_process("midataset", "register", "datasets.json", cwd=tmp_path, env=home)
    assert result.returncode == 1 and "carries a credential outside its query (:***@)" in result.stderr
    assert "S3CR3T" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
