"""miviewer in a real browser: Debian's headless Chromium driven by Playwright, against a real
`miviewer` process on 127.0.0.1 over a seeded SQLite store. Screenshots of every page are kept
in the test's temporary folder (printed at the end of the session with -s)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_viewer import SECRET, XSS, seed

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.skipif(not CHROMIUM.exists(), reason="browser tests need Debian's chromium at "
                                                              "/usr/bin/chromium (apt-get install chromium)")]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, str, list[str]]:
    """A miviewer process and its address, read from its first line; its other lines too."""
    process = subprocess.Popen([str(Path(sys.executable).parent / "miviewer"), "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    first = process.stdout.readline()
    found = re.search(r"at (http://\S+/)", first)
    assert found, first + process.stdout.read() if process.poll() is not None else first
    lines = [first]
    if "--host" in args:
        lines.append(process.stdout.readline())
    return process, found[1], lines


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    from playwright.sync_api import sync_playwright  # the test extra: missing it is an error, not a skip

    from mitorch.store import open_store

    root = tmp_path_factory.mktemp("viewer_browser")
    uri = f"sqlite:///{root / 'db.sqlite'}"
    store = open_store(uri)
    ids = seed(store, root / "artifacts")
    env = {**os.environ, "MITORCH_DB_URI": uri, "MITORCH_ARTIFACTS_URI": str(root / "artifacts"),
           "MITORCH_VIEWER_REFRESH_S": "0.5", "MITORCH_VIEWER_TOKEN": ""}
    process, url, _ = _start(env)
    shots = root / "screenshots"
    shots.mkdir()
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.on("request", lambda request: requests.append(request.url))
        yield {"store": store, "ids": ids, "url": url, "context": context, "shots": shots, "requests": requests,
               "env": env, "browser": browser}
        context.close()
        browser.close()
    process.terminate()
    process.wait(timeout=10)
    store.close()
    print(f"\nscreenshots: {shots}")


@pytest.fixture
def page(site):
    page = site["context"].new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert not errors, errors  # no script error on any page


def _shot(site, page, name: str) -> None:
    page.screenshot(path=str(site["shots"] / f"{name}.png"), full_page=True)


def test_dashboard_renders_the_seeded_counts(site, page) -> None:
    page.goto(site["url"])
    assert page.locator('[data-status="completed"] .n').inner_text() == "4"
    assert page.locator('[data-status="new"] .n').inner_text() == "4"
    assert page.locator("#running tbody tr").count() == 2
    assert page.locator("#queue tbody tr").first.inner_text().startswith("1\t" + site["ids"]["queued_first"]) or \
        site["ids"]["queued_first"] in page.locator("#queue tbody tr").first.inner_text()
    _shot(site, page, "dashboard")
    added = site["store"].add_training({"name": "just queued", "config": {}})  # the page refreshes itself
    try:
        page.wait_for_function("() => document.querySelector('[data-status=\"new\"] .n').textContent === '5'",
                               timeout=15000)
        assert "just queued" in page.locator("#queue").inner_text()
    finally:
        site["store"].update_training(added, {"status": "cancelled"})


def test_trainings_filter_and_sort_in_the_browser(site, page) -> None:
    ids = site["ids"]
    total = f"{len(site['store'].training_states())} trainings"
    page.goto(site["url"] + "trainings")
    assert page.locator("#total").inner_text() == total
    _shot(site, page, "trainings")
    page.locator('#filters input[name=status][value=failed]').check()  # htmx replaces the table
    page.wait_for_function("() => document.querySelector('#total').textContent === '1 training'")
    assert ids["failed"] in page.locator("#trainings tbody").inner_text() and "status=failed" in page.url
    page.locator('#filters input[name=status][value=failed]').uncheck()
    page.wait_for_function("total => document.querySelector('#total').textContent === total", arg=total)
    page.locator('a.sort[data-sort="top1_accuracy"]').click()
    page.wait_for_url(re.compile("sort=top1_accuracy"))
    first = page.locator("#trainings tbody tr").first
    assert first.get_attribute("data-id") == ids["best"]
    assert first.locator('td[data-metric="top1_accuracy"]').inner_text().startswith("0.9")
    page.locator("#filters input[name=q]").fill("mobilenet")
    page.wait_for_function("() => document.querySelector('#total').textContent === '1 training'")
    _shot(site, page, "trainings_filtered")


def test_training_curves_draw_the_stored_epochs_and_follow_a_running_one(site, page) -> None:
    ids, store = site["ids"], site["store"]
    page.goto(site["url"] + f"trainings/{ids['best']}")
    page.wait_for_selector("figure.chart canvas")
    data = page.evaluate("window.miviewer.charts['top1_accuracy'].data")
    stored = store.list_results(ids["best"])
    assert data == [[r["epoch"] for r in stored], [r["val"]["top1_accuracy"] for r in stored]]
    assert page.locator("figure.chart canvas").count() >= 3  # loss, top1, top5, lr
    assert page.locator("#log").inner_text().startswith("epoch 1 done") and SECRET not in page.content()
    _shot(site, page, "training")

    page.goto(site["url"] + f"trainings/{ids['running']}")
    page.wait_for_selector("figure.chart canvas")
    assert page.evaluate("window.miviewer.charts['top1_accuracy'].data[0]") == [1, 2]
    store.put_result(ids["running"], {"epoch": 3, "train_loss": 0.4, "val": {"top1_accuracy": 0.61, "loss": 0.5}})
    page.wait_for_function("() => window.miviewer.charts['top1_accuracy'].data[0].length === 3", timeout=15000)
    assert page.evaluate("window.miviewer.charts['top1_accuracy'].data[1][2]") == 0.61
    page.wait_for_function("() => document.querySelectorAll('#epochs tbody tr').length === 3", timeout=15000)
    _shot(site, page, "training_running")


def test_a_live_training_page_asks_once_per_poll_for_what_is_new(site, page) -> None:
    from mitorch.store.base import now

    store, base = site["store"], site["url"]
    training_id = store.add_training({"name": "followed", "config": {}})
    store.put_result(training_id, {"epoch": 1, "train_loss": 0.9, "lr": 0.1, "val": {"top1_accuracy": 0.2}})
    store.update_training(training_id, {"status": "running", "attempt": 1, "heartbeat_at": now()})
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(base + f"trainings/{training_id}")
    page.wait_for_function("() => window.miviewer.polls >= 1", timeout=15000)
    asked.clear()
    first = page.evaluate("window.miviewer.polls")
    page.wait_for_timeout(2500)  # several poll periods (MITORCH_VIEWER_REFRESH_S=0.5)
    polls = page.evaluate("window.miviewer.polls") - first
    assert polls >= 2 and len(asked) <= polls + 1  # one request per poll, one perhaps still on its way
    assert set(asked) == {f"{base}api/trainings/{training_id}?after=1"}, asked

    store.put_result(training_id, {"epoch": 2, "train_loss": 0.7, "lr": 0.05, "duration_s": 2.5,
                                   "val": {"top1_accuracy": 0.35}})
    page.wait_for_function("() => document.querySelectorAll('#epochs tbody tr').length === 2", timeout=15000)
    assert page.locator("#epochs tbody tr").nth(1).inner_text().split("\t") == ["2", "0.7", "0.05", "2.5 s", "0.35"]
    assert page.evaluate("window.miviewer.charts['top1_accuracy'].data") == [[1, 2], [0.2, 0.35]]
    assert page.locator("#epoch-count").inner_text() == "2"
    assert f"{base}trainings/{training_id}" not in asked  # the page was extended, not rendered again

    folder = Path(site["env"]["MITORCH_ARTIFACTS_URI"]) / "followed"
    folder.mkdir()
    (folder / "weights.pt").write_bytes(b"0" * 10)
    store.update_training(training_id, {"status": "completed", "metrics": {"top1_accuracy": 0.35},
                                        "artifacts": str(folder)})
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('completed')",
                           timeout=15000)
    assert "weights.pt" in page.locator("#details").inner_text()
    assert page.locator("#final-metrics").inner_text().split() == ["top1_accuracy", "0.35"]
    ended = page.evaluate("window.miviewer.polls")
    page.wait_for_timeout(1500)
    assert page.evaluate("window.miviewer.polls") == ended  # a finished training is not polled
    _shot(site, page, "training_followed")


def test_compare_shows_overlaid_curves_and_the_config_diff(site, page) -> None:
    ids = site["ids"]
    page.goto(site["url"] + "trainings?sort=top1_accuracy")
    for training_id in (ids["best"], ids["other"]):
        page.locator(f'#trainings input[name=id][value="{training_id}"]').check()
    page.get_by_role("button", name="Compare ticked").click()
    page.wait_for_url(re.compile("/compare"))
    page.wait_for_selector("figure.chart canvas")
    diff = page.locator("#diff").inner_text()
    assert "config.optimizer.lr" in diff and "config.model._target_" in diff and "config.batch_size" not in diff
    series = page.evaluate("window.miviewer.charts['top1_accuracy'].series.length")
    assert series == 3  # the epoch axis and one line per training
    _shot(site, page, "compare")


def test_cancel_from_the_page_asks_first_and_changes_the_store(site, page) -> None:
    ids, store = site["ids"], site["store"]
    messages: list[str] = []

    def answer(dialog) -> None:
        messages.append(dialog.message)
        dialog.dismiss() if len(messages) == 1 else dialog.accept()

    page.on("dialog", answer)
    page.goto(site["url"] + f"trainings/{ids['queued_later']}")
    page.get_by_role("button", name="Cancel").click()  # dismissed: nothing happens
    assert store.get_training(ids["queued_later"])["status"] == "new"
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_selector("#action-lines")
    assert messages == ["Cancel 1 training(s)?"] * 2
    assert page.locator("#action-lines").inner_text() == f"cancelled {ids['queued_later']}"
    assert store.get_training(ids["queued_later"])["status"] == "cancelled"
    _shot(site, page, "action_done")
    page.locator("#back").click()
    page.wait_for_selector("#status")
    assert page.locator("#status").inner_text().startswith("cancelled")


def test_stored_markup_is_shown_as_text(site, page) -> None:
    ids = site["ids"]
    page.goto(site["url"] + f"trainings/{ids['failed']}")
    assert page.evaluate("window.__xss === undefined")
    assert page.locator("h1 .name").inner_text() == XSS
    assert "window.__xss=1" in page.locator("#training-error").inner_text()
    _shot(site, page, "training_failed")
    page.goto(site["url"] + "trainings?q=script")
    assert page.evaluate("window.__xss === undefined")


def test_job_and_dataset_pages(site, page) -> None:
    ids = site["ids"]
    page.goto(site["url"] + f"jobs/{ids['search']}")
    page.wait_for_selector("#study-charts figure.chart canvas")
    assert page.locator("#study-charts figure.chart").count() == 2  # history and intermediate values
    assert page.locator("#trials tbody tr").first.inner_text().startswith("1\tcomplete\t0.85")
    assert page.locator("#importances tr").count() == 2
    _shot(site, page, "job_search")
    page.goto(site["url"] + f"jobs/{ids['sweep']}")
    assert page.locator("#job-trainings tbody tr").count() == 2
    _shot(site, page, "job_sweep")
    page.goto(site["url"] + "datasets")
    assert page.locator("section.dataset").count() == 2 and SECRET not in page.content()
    _shot(site, page, "datasets")
    page.goto(site["url"] + "jobs")
    _shot(site, page, "jobs")
    page.goto(site["url"] + "api")
    _shot(site, page, "api")


def test_a_server_beyond_loopback_refuses_requests_without_its_token(site) -> None:
    process, url, lines = _start(site["env"], "--host", "0.0.0.0")
    try:
        token = re.search(r"token (\S+);", lines[1])[1]
        page = site["context"].new_page()
        refused = page.goto(url)
        assert refused.status == 401 and "needs its token" in page.content()
        page.goto(f"{url}trainings?token={token}")
        total = f"{len(site['store'].training_states())} trainings"
        assert page.url == f"{url}trainings" and page.locator("#total").inner_text() == total
        page.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_no_request_left_the_machine(site) -> None:
    assert len(site["requests"]) > 20
    outside = [u for u in site["requests"] if not u.startswith(("http://127.0.0.1:", "data:", "about:"))]
    assert outside == []


def test_a_multi_objective_jobs_page_plots_its_front_and_parameters(site, page, tmp_path: Path) -> None:
    from mitorch.store import open_store
    from tests.test_search_multi import _job, _run

    uri = f"sqlite:///{tmp_path / 'db.sqlite'}"  # a store of its own: the step runs every running job
    store = open_store(uri)
    job_id = _job(store, tmp_path, constraints=["num_parameters <= 4e7"], n_trials=9, sampler={"name": "grid"})
    _run(store, job_id)
    store.close()
    process, url, _ = _start({**site["env"], "MITORCH_DB_URI": uri})
    try:
        page.goto(url + f"jobs/{job_id}")
        page.wait_for_selector("#pareto-charts figure.chart canvas")
        charts = page.locator("#pareto-charts figure.chart")
        assert charts.count() == 2  # the objectives' plane and the parallel coordinates
        legend = charts.nth(0).locator(".u-legend .u-series")
        assert [legend.nth(i).locator(".u-label").inner_text() for i in range(4)] == [
            "top1_accuracy", "Pareto front", "dominated", "infeasible"]
        box = charts.nth(0).locator(".u-over").bounding_box()
        page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)  # the most accurate trial
        assert re.fullmatch(r"trial \d+: 0\.8", legend.nth(0).locator(".u-value").inner_text())
        assert legend.nth(3).locator(".u-value").inner_text() == "50,000,000"  # depth 50 breaks the constraint
        parallel = charts.nth(1).locator(".u-legend .u-series")
        assert parallel.count() == 1 + 9 and parallel.nth(1).locator(".u-label").inner_text().startswith("trial ")
        _shot(site, page, "job_multi_objective")
    finally:
        process.terminate()
        process.wait(timeout=10)
