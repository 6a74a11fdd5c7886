"""Datasets and artifacts that live elsewhere: midataset, the download cache with retries (a local
http server), and Azure Blob Storage through Azurite, with no secret in any output or record."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from mitorch.files import credentials, datasets, remote
from mitorch.store.sqlite import SQLiteStore
from tests.helpers import make_text_dataset, run, run_in_process, user_home

# Azurite's documented development account (a public, well-known key that only opens the emulator).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A user's own database, credentials file and cache, with quick retries of failed transfers."""
    return user_home(tmp_path, monkeypatch, MITORCH_TRANSFER_BACKOFF_S="0.01")


# -- midataset ---------------------------------------------------------------------------------


def _entry(name: str, version: int, train: str, val: str, support: list[str] | None = None) -> dict:
    return {"name": name, "version": version, "train": {"path": train, "support_files": support or []},
            "val": {"path": val, "support_files": support or []}}


def test_register_list_show_and_upsert(tmp_path: Path, home: dict) -> None:
    data = make_text_dataset(tmp_path / "data")
    sas = "sv=2024-01-01&sr=c&sp=r&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
    blob = f"https://acct.blob.core.windows.net/sets/shapes/val.txt?{sas}"
    file = tmp_path / "datasets.json"
    file.write_text(json.dumps([_entry("shapes", 1, "data/train.txt", blob, ["data/labels.txt"]),
                                _entry("shapes", 2, str(data.train), str(data.val))]))
    registered = run_in_process("midataset", "register", file, cwd=tmp_path, env=home)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.split("\n")[:2] == ["registered shapes:1", "registered shapes:2"]

    shown = run_in_process("midataset", "show", "shapes", "--version", "1", "--json", cwd=tmp_path, env=home)
    record = json.loads(shown.stdout)
    assert record["train"]["path"] == str(data.train)  # relative to the file, made absolute
    assert record["val"]["path"] == "https://acct.blob.core.windows.net/sets/shapes/val.txt"
    assert json.loads(run_in_process("midataset", "show", "shapes", "--json", cwd=tmp_path, env=home).stdout)["version"] == 2
    table = run_in_process("midataset", "list", cwd=tmp_path, env={**home, "COLUMNS": "250"}).stdout
    assert "shapes" in table and "acct.blob.core.windows.net" in table
    # The token went to the owner-only credentials file, and is found again for the blob.
    assert credentials.sas_for(record["val"]["path"]) == sas
    assert os.stat(home["MITORCH_CREDENTIALS"]).st_mode & 0o777 == 0o600
    assert "c2VjcmV0" not in Path(home["MITORCH_DB_URI"].removeprefix("sqlite:///")).read_bytes().decode("latin-1")

    file.write_text(json.dumps([_entry("shapes", 1, str(data.val), str(data.val))]))
    assert run_in_process("midataset", "register", file, cwd=tmp_path, env=home).returncode == 0
    versions = json.loads(run_in_process("midataset", "list", "--json", cwd=tmp_path, env=home).stdout)
    assert [(d["version"], d["train"]["path"]) for d in versions] == [(1, str(data.val)), (2, str(data.train))]


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "version": -1}, "version must be a whole number"),
    ({"name": "x", "version": 1, "train": {"path": "missing.txt"}, "val": {"path": "missing.txt"}},
     "missing.txt does not exist"),
    ({"name": "x", "version": 1, "train": {"path": "ftp://host/a.txt"}, "val": {"path": "a"}},
     "neither a local path nor an http(s) URL"),
    ({"name": "x", "version": 1, "train": {"path": "http://example.com/a.txt"}, "val": {"path": "a"}},
     "plain http; use https"),
    ({"name": "x", "version": 1, "train": {"path": "https://h/a.txt", "support_files": "b"}, "val": {"path": "a"}},
     "support_files must be a list"),
    ({"name": "x", "version": 1, "colour": "red"}, "unknown key(s) colour"),
])
def test_a_bad_entry_registers_nothing(tmp_path: Path, home: dict, entry: dict, message: str) -> None:
    good = _entry("good", 1, "https://acct.blob.core.windows.net/c/t.txt?sv=1&sig=abc", "https://h/v.txt")
    file = tmp_path / "datasets.json"
    file.write_text(json.dumps([good, entry]))
    result = run_in_process("midataset", "register", file, cwd=tmp_path, env=home)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert SQLiteStore(tmp_path / "db.sqlite").list_datasets() == []
    assert not Path(home["MITORCH_CREDENTIALS"]).exists()  # not even the good entry's token


def test_misubmit_dataset_is_checked_and_pinned(tmp_path: Path, home: dict) -> None:
    data = make_text_dataset(tmp_path / "data")
    file = tmp_path / "datasets.json"
    file.write_text(json.dumps([_entry("shapes", v, str(data.train), str(data.val)) for v in (1, 2)]))
    assert run_in_process("midataset", "register", file, cwd=tmp_path, env=home).returncode == 0
    store = SQLiteStore(tmp_path / "db.sqlite")

    missing = run_in_process("misubmit", "--dataset", "nope", cwd=tmp_path, env=home)
    assert missing.returncode == 1 and "dataset nope is not registered" in missing.stderr
    both = run_in_process("misubmit", "--dataset", "shapes", f"data.train={data.train}", f"data.val={data.val}",
               cwd=tmp_path, env=home)
    assert both.returncode == 1 and "do not set them as well" in both.stderr
    url = run_in_process("misubmit", "data.train='https://h/t.txt?sig=x'", "data.val=https://h/v.txt", cwd=tmp_path, env=home)
    assert url.returncode == 1 and "--dataset" in url.stderr and "sig=x" not in url.stderr
    unquoted = run_in_process("misubmit", "data.train=https://h/t.txt?sig=x", cwd=tmp_path, env=home)
    assert "quote a value" in unquoted.stderr and "sig=x" not in unquoted.stderr
    assert store.list_trainings() == []

    latest = run_in_process("misubmit", "--dataset", "shapes", cwd=tmp_path, env=home).stdout.strip()
    pinned = run_in_process("misubmit", "--dataset=shapes:1", cwd=tmp_path, env=home).stdout.strip()
    assert store.get_training(latest)["dataset"] == {"name": "shapes", "version": 2}
    assert store.get_training(pinned)["dataset"] == {"name": "shapes", "version": 1}
    sweep = run_in_process("misubmit", "--dataset", "shapes:1", "-m", "optimizer.lr=0.1,0.01", cwd=tmp_path, env=home)
    assert sweep.returncode == 0, sweep.stderr
    job_id = sweep.stdout.split()[1]
    assert [t["dataset"]["version"] for t in store.list_trainings(job_id=job_id)] == [1, 1]


def test_the_original_mitorch_dataset_file_registers_from_version_0(tmp_path: Path, home: dict) -> None:
    # The dataset definition of the original MiTorch's README, with files that exist.
    make_text_dataset(tmp_path / "data")
    original = [{"name": "dataset_name", "version": 0,
                 "train": {"path": "data/train.txt", "support_files": ["data/train.zip"]},
                 "val": {"path": "data/val.txt", "support_files": ["data/val.zip"]}}]
    (tmp_path / "datasets.json").write_text(json.dumps(original))
    registered = run_in_process("midataset", "register", "datasets.json", cwd=tmp_path, env=home)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout == "registered dataset_name:0\n"
    shown = run_in_process("midataset", "show", "dataset_name", "--version", "0", "--json", cwd=tmp_path, env=home)
    assert json.loads(shown.stdout)["version"] == 0

    store = SQLiteStore(tmp_path / "db.sqlite")
    pinned = run_in_process("misubmit", "--dataset", "dataset_name:0", cwd=tmp_path, env=home)
    assert pinned.returncode == 0, pinned.stderr
    assert store.get_training(pinned.stdout.strip())["dataset"] == {"name": "dataset_name", "version": 0}
    sweep = run_in_process("misubmit", "--dataset", "dataset_name:0", "-m", "optimizer.lr=0.1,0.01", cwd=tmp_path, env=home)
    assert sweep.returncode == 0, sweep.stderr
    assert [t["dataset"]["version"] for t in store.list_trainings(job_id=sweep.stdout.split()[1])] == [0, 0]


# -- downloads over http(s) --------------------------------------------------------------------


class FlakyFiles(SimpleHTTPRequestHandler):
    """Serves a folder; the first `failures` GETs of each path answer 503."""

    failures = 2
    requests: Counter = Counter()

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        self.requests[self.path] += 1
        if self.requests[self.path] <= self.failures:
            self.send_error(503, "try again")
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_files(tmp_path: Path):
    folder = tmp_path / "served"
    folder.mkdir()
    FlakyFiles.requests = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: FlakyFiles(*a, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_downloads_retry_then_come_from_the_cache(tmp_path: Path, home: dict, http_files) -> None:
    folder, url = http_files
    data = make_text_dataset(folder)
    split = {"path": f"{url}/train.txt", "support_files": [f"{url}/train.zip", f"{url}/labels.txt"]}
    local = Path(datasets.local_split(split))
    assert local.read_text() == data.train.read_text()
    assert sorted(p.name for p in local.parent.iterdir()) == ["labels.txt", "train.txt", "train.zip"]
    assert (local.parent / "train.zip").read_bytes() == (folder / "train.zip").read_bytes()
    assert FlakyFiles.requests["/train.zip"] == 3  # two 503s, then the file

    assert Path(datasets.local_split(split)) == local
    assert sum(FlakyFiles.requests.values()) == 9  # nothing downloaded again

    FlakyFiles.failures = 0
    with pytest.raises(remote.TransferError, match=r"HTTP 404") as missing:
        remote.fetch(f"{url}/absent.txt?token=1")
    assert FlakyFiles.requests["/absent.txt?token=1"] == 1  # a 404 is not retried
    assert "token=1" not in str(missing.value)
    FlakyFiles.failures = 10
    with pytest.raises(remote.TransferError, match="after 3 attempts"):
        os.environ["MITORCH_TRANSFER_RETRIES"] = "2"
        try:
            remote.fetch(f"{url}/val.txt")
        finally:
            del os.environ["MITORCH_TRANSFER_RETRIES"]
            FlakyFiles.failures = 2
    assert not list((Path(home["MITORCH_CACHE_DIR"]) / "downloads").glob("*/val.txt"))  # no partial file kept


def test_a_presigned_url_keeps_its_signature_out_of_the_store(tmp_path: Path, home: dict, http_files) -> None:
    folder, url = http_files
    data = make_text_dataset(folder)
    signed = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=5EC7E7"
    entry = _entry("signed", 0, str(data.train), f"{url}/val.txt?{signed}")
    (tmp_path / "datasets.json").write_text(json.dumps([entry]))
    assert run_in_process("midataset", "register", "datasets.json", cwd=tmp_path, env=home).returncode == 0

    record = SQLiteStore(tmp_path / "db.sqlite").get_dataset("signed", 0)
    assert record["val"]["path"] == f"{url}/val.txt"
    assert "5EC7E7" not in Path(home["MITORCH_DB_URI"].removeprefix("sqlite:///")).read_bytes().decode("latin-1")
    # The download puts the signature back.
    assert Path(datasets.local_split(record["val"])).read_text() == data.val.read_text()
    assert FlakyFiles.requests[f"/val.txt?{signed}"] == 3


# -- Azure Blob Storage through Azurite --------------------------------------------------------


def _azurite_command() -> str:
    found = shutil.which("azurite-blob")
    if found:
        return found
    prefix = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mitorch-tests" / "azurite"
    command = prefix / "node_modules" / ".bin" / "azurite-blob"
    if not command.exists():
        if shutil.which("npm") is None:
            pytest.skip("the Azure Blob tests need Azurite: install Node.js and npm, or azurite on the PATH")
        subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "azurite@3"],
                       check=True, capture_output=True, timeout=600)
    return str(command)


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """An Azurite blob service on 127.0.0.1 (never reaching outside: --disableTelemetry)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    location = tmp_path_factory.mktemp("azurite")
    process = subprocess.Popen([_azurite_command(), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                                "--location", str(location), "--disableTelemetry", "--skipApiVersionCheck",
                                "--loose", "--silent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "Azurite did not start"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/{ACCOUNT}"
    process.terminate()
    process.wait(timeout=30)


def _container(endpoint: str, name: str) -> str:
    """Creates a container; returns its URL with a SAS token that may read, write, list and delete."""
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    service = BlobServiceClient(endpoint, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY})
    service.create_container(name)
    token = generate_container_sas(ACCOUNT, name, account_key=ACCOUNT_KEY, expiry=datetime.now(timezone.utc)
                                   + timedelta(hours=2), permission=ContainerSasPermissions(
                                       read=True, write=True, create=True, list=True, delete=True))
    return f"{endpoint}/{name}?{token}"


def _blob(container: str, name: str) -> str:
    base, token = container.split("?")
    return f"{base}/{name}?{token}"


@pytest.mark.slow
def test_blob_dataset_trains_and_weights_round_trip_with_no_secret_anywhere(tmp_path: Path, home: dict,
                                                                           azurite: str) -> None:
    from azure.storage.blob import BlobClient

    data = make_text_dataset(tmp_path / "data", num_train=16, num_val=6)
    sets, outputs = _container(azurite, "datasets"), _container(azurite, "artifacts")
    for path in ("train.txt", "train.zip", "val.txt", "val.zip", "labels.txt"):
        BlobClient.from_blob_url(_blob(sets, f"shapes/{path}")).upload_blob((data.root / path).read_bytes())
    entry = {"name": "shapes", "version": 1,
             "train": {"path": _blob(sets, "shapes/train.txt"),
                       "support_files": [_blob(sets, "shapes/train.zip"), _blob(sets, "shapes/labels.txt")]},
             "val": {"path": _blob(sets, "shapes/val.txt"),
                     "support_files": [_blob(sets, "shapes/val.zip"), _blob(sets, "shapes/labels.txt")]}}
    (tmp_path / "datasets.json").write_text(json.dumps([entry]))
    env = {**home, "MITORCH_ARTIFACTS_URI": outputs}
    outputs_seen = []

    def cli(prog: str, *args: str, **extra: str):
        result = run(prog, *args, cwd=tmp_path, env={**env, **extra})
        outputs_seen.extend([result.stdout, result.stderr])
        assert result.returncode == 0, result.stderr
        return result.stdout

    cli("midataset", "register", "datasets.json")
    quick = ["image_size=32", "batch_size=8", "data.num_workers=0", "max_epochs=2"]
    first = cli("misubmit", "--dataset", "shapes", *quick).strip()
    cli("mitrain", "--training-id", first)
    record = json.loads(cli("miquery", first, "--json"))
    training = record["training"]
    assert training["status"] == "completed", training.get("error")
    assert [r["epoch"] for r in record["results"]] == [1, 2]
    artifacts = outputs.split("?")[0]
    assert training["weights"] == f"{artifacts}/{first}/attempt-1/model.pt"
    assert training["artifacts"] == f"{artifacts}/{first}/"
    for name, kept in (("model.pt", True), ("last.pt", False)):  # weights stored: no last.pt
        assert BlobClient.from_blob_url(_blob(outputs, f"{first}/attempt-1/{name}")).exists() == kept, name
    uploaded = BlobClient.from_blob_url(_blob(outputs, f"{first}/attempt-1/model.pt")).download_blob().readall()

    # Another machine: an empty cache, and only the URL in the record to find the weights by.
    second = cli("misubmit", "--dataset", "shapes:1", f"base={first}", *quick, "max_epochs=1").strip()
    cli("mitrain", "--training-id", second, MITORCH_CACHE_DIR=str(tmp_path / "other-cache"))
    assert json.loads(cli("miquery", second, "--json"))["training"]["status"] == "completed"
    fetched = list((tmp_path / "other-cache" / "downloads").glob("*/model.pt"))
    assert len(fetched) == 1 and fetched[0].read_bytes() == uploaded
    cli("midataset", "list")
    cli("midataset", "show", "shapes")
    cli("miquery")

    signatures = {token.split("sig=")[1].split("&")[0] for token in (sets, outputs)}
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*")).decode("latin-1")
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "cache").rglob("*.log"))
    for signature in signatures:
        for text in (*outputs_seen, stored, logs):
            assert signature not in text and quote(signature, safe="") not in text
    assert "sig=" not in stored


def test_a_refused_blob_download_is_one_line_without_the_token(tmp_path: Path, home: dict, azurite: str) -> None:
    container = _container(azurite, "private")
    forged = _blob(container, "x.txt").replace("sig=", "sig=AAAA")
    with pytest.raises(remote.TransferError) as refused:
        remote.fetch(forged)
    message = str(refused.value)
    assert "HTTP 403" in message and "\n" not in message and "sig" not in message.replace("sig=***", "")
