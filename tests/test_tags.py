"""Tags and notes on trainings (micontrol tag/untag/note), and what miquery shows of a training's
lineage: fingerprint, parent, children, tags and note; miquery --tag lists the tagged ones."""
from __future__ import annotations

import importlib
import json
from urllib.parse import quote

import pytest

from mitorch.store import open_store

CONFIG = {"max_epochs": 1, "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1}}


def command(prog: str, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """A command's main() in this process: (exit status, stdout, stderr)."""
    code = 0
    try:
        importlib.import_module(f"mitorch.cli.{prog}").main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def tables(out: str) -> dict[str, list[list[str]]]:
    """miquery's plain layout read back: {title: [header, *rows]}."""
    found = {}
    for block in out.strip("\n").split("\n\n"):
        lines = block.split("\n")
        if lines[0].startswith("# "):
            found[lines[0][2:]] = [line.split("\t") for line in lines[1:] if not line.startswith("# ")]
    return found


def test_tag_untag_and_note_change_only_that_training(home: dict, capsys: pytest.CaptureFixture) -> None:
    store = open_store()
    first, second = (store.add_training({"config": CONFIG}) for _ in range(2))
    code, out, _ = command("micontrol", ["tag", first, "baseline", "paper v2, draft", "baseline"], capsys)
    assert code == 0
    assert out == f"tagged {first} baseline, paper v2, draft, baseline; its tags: baseline, paper v2, draft\n"
    assert store.get_training(first)["tags"] == ["baseline", "paper v2, draft"]
    code, out, _ = command("micontrol", ["tag", first, "baseline"], capsys)
    assert code == 0 and out.startswith(f"unchanged {first}")
    assert command("micontrol", ["untag", first, "baseline"], capsys)[0] == 0
    assert store.get_training(first)["tags"] == ["paper v2, draft"]
    assert command("micontrol", ["note", first, "  lr too high, see run 7  "], capsys)[0] == 0
    assert store.get_training(first)["note"] == "lr too high, see run 7"
    assert "tags" not in store.get_training(second) and "note" not in store.get_training(second)
    assert command("micontrol", ["note", first, ""], capsys)[0] == 0
    assert store.get_training(first)["note"] is None


@pytest.mark.parametrize("argv, message", [
    (["tag", "{id}", "   "], "a tag must be one line of text of 1 to 100 characters"),
    (["tag", "{id}", "two\nlines"], "a tag must be one line of text"),
    (["tag", "{id}", "x" * 101], "got a string of 101 characters"),
    (["tag", "{id}", "mongodb://me:hunter2@db/x"], "a tag carries a credential of the form :***@;"),
    (["tag", "{id}", *(f"t{n}" for n in range(21))], "at most 20 tags; {id} would have 21"),
    (["note", "{id}", "see https://acct.blob.core.windows.net/c?sv=1&sig=SECRETSIG"],
     "carries a credential of the form sig=***;"),
    (["note", "{id}", "mongodb://me:hunter2@db/x"], "carries a credential of the form :***@;"),
    (["note", "{id}", "two\nlines"], "one line of printable text"),
    (["note", "{id}", "n" * 1001], "at most 1000 characters, got 1001"),
    (["tag", "0123456789abcdef01234567", "baseline"], "no training 0123456789abcdef01234567; see miquery"),
])
def test_bad_tags_and_notes_are_one_line_errors_and_store_nothing(home: dict, capsys: pytest.CaptureFixture,
                                                                    argv: list[str], message: str) -> None:
    store = open_store()
    training_id = store.add_training({"config": CONFIG})
    code, out, err = command("micontrol", [a.replace("{id}", training_id) for a in argv], capsys)
    message = message.replace("{id}", training_id)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert "SECRETSIG" not in err and "hunter2" not in err
    record = store.get_training(training_id)
    assert "tags" not in record and "note" not in record


def test_miquery_shows_fingerprint_parent_children_tags_and_note(home: dict, capsys: pytest.CaptureFixture) -> None:
    store = open_store()
    parent = store.add_training({"config": CONFIG, "fingerprint": "f" * 64, "tags": ["baseline"]})
    children = [store.add_training({"config": CONFIG, "parent": parent, "tags": ["clone"]}) for _ in range(2)]
    store.add_training({"config": CONFIG, "parent": children[0]})  # a grandchild: not parent's child
    assert command("micontrol", ["note", parent, "the <i>reference</i> run"], capsys)[0] == 0
    code, out, _ = command("miquery", [parent, "--json"], capsys)
    view = json.loads(out)
    assert code == 0 and view["training"]["fingerprint"] == "f" * 64 and view["training"]["tags"] == ["baseline"]
    assert sorted(c["id"] for c in view["children"]) == sorted(children)
    assert view["training"]["note"] == "the <i>reference</i> run"
    code, out, _ = command("miquery", [parent], capsys)
    lines = out.splitlines()
    assert f"fingerprint: {'f' * 64}" in lines and "tags: baseline" in lines
    assert "note: the <i>reference</i> run" in lines
    shown = tables(out)["children (cloned from it or started from its weights)"]
    assert sorted(row[0] for row in shown[1:]) == sorted(children) and shown[1][3] == "clone"
    code, out, _ = command("miquery", [children[1], "--json"], capsys)
    assert json.loads(out)["training"]["parent"] == parent and json.loads(out)["children"] == []
    assert f"parent: {parent}" in command("miquery", [children[1]], capsys)[1].splitlines()


def test_a_training_from_before_lineage_shows_none_of_it(home: dict, capsys: pytest.CaptureFixture) -> None:
    training_id = open_store().add_training({"config": CONFIG})
    code, out, _ = command("miquery", [training_id], capsys)
    assert code == 0 and not any(line.startswith(("fingerprint:", "parent:", "tags:", "note:", "# children"))
                                 for line in out.splitlines())


def test_miquery_tag_lists_only_the_tagged_trainings(home: dict, capsys: pytest.CaptureFixture) -> None:
    store = open_store()
    tagged = [store.add_training({"config": CONFIG, "tags": ["baseline", "x"]}) for _ in range(2)]
    store.add_training({"config": CONFIG, "tags": ["baseline-2"]})
    store.add_training({"config": CONFIG})
    code, out, _ = command("miquery", ["--tag", "baseline", "--json"], capsys)
    assert code == 0 and sorted(t["id"] for t in json.loads(out)["tagged"]) == sorted(tagged)
    code, out, _ = command("miquery", ["--tag", "baseline"], capsys)
    rows = tables(out)["trainings tagged baseline"]
    assert rows[0] == ["id", "status", "result", "tags", "note"] and sorted(r[0] for r in rows[1:]) == sorted(tagged)
    code, _, err = command("miquery", ["--tag", "a\tb"], capsys)
    assert code != 0 and "--tag must be one line of text" in err and len(err.strip().splitlines()) == 1


XSS = '<script>window.__xss=1</script>'


@pytest.fixture
def family(home: dict) -> dict[str, str]:
    """A parent with two children (one tagged), and an unrelated training; ids by role."""
    store = open_store()
    ids = {"parent": store.add_training({"config": CONFIG, "fingerprint": "a" * 64, "tags": ["baseline"]})}
    store.update_training(ids["parent"], {"status": "completed", "note": f"keep this one {XSS}"})
    ids["child"] = store.add_training({"config": CONFIG, "parent": ids["parent"], "tags": ["clone"]})
    ids["child2"] = store.add_training({"config": CONFIG, "parent": ids["parent"]})
    ids["other"] = store.add_training({"config": CONFIG})
    return ids


@pytest.fixture
def client(family: dict):
    from starlette.testclient import TestClient

    from mitorch.viewer import Settings, create_app

    return TestClient(create_app(open_store(), Settings(refresh_s=0, store_label="sqlite:///db")),
                      base_url="http://127.0.0.1:8080", follow_redirects=False)


def test_the_training_page_shows_lineage_tags_and_an_escaped_note(family: dict, client) -> None:
    page = client.get(f"/trainings/{family['parent']}").text
    lineage = page.split('id="lineage"')[1].split("</dl>")[0]
    assert f'<code id="fingerprint">{"a" * 64}</code>' in lineage
    children = lineage.split('id="children"')[1].split("</dd>")[0]
    assert {f'<a href="/trainings/{family[c]}">' in children for c in ("child", "child2")} == {True}
    assert family["other"] not in lineage and 'href="/trainings?tag=baseline"' in lineage
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in lineage and XSS not in page
    child = client.get(f"/trainings/{family['child']}").text.split('id="lineage"')[1].split("</dl>")[0]
    assert f'<a href="/trainings/{family["parent"]}">' in child.split('id="parent"')[1].split("</dd>")[0]
    assert "not recorded" in child and 'id="note"' not in child
    api = client.get(f"/api/trainings/{family['parent']}").json()["lineage"]
    assert sorted(c["id"] for c in api["children"]) == sorted([family["child"], family["child2"]])
    assert api["fingerprint"] == "a" * 64 and api["tags"] == ["baseline"] and api["parent"] is None
    assert client.get(f"/api/trainings/{family['child']}").json()["lineage"]["parent"]["id"] == family["parent"]


def test_the_trainings_list_filters_by_tag_and_sees_tags_added_later(family: dict, client,
                                                                       capsys: pytest.CaptureFixture) -> None:
    def tagged(tag: str) -> list[str]:
        return [row["id"] for row in client.get(f"/api/trainings?tag={tag}").json()["trainings"]]

    assert tagged("baseline") == [family["parent"]] and tagged("clone") == [family["child"]]
    assert tagged("nothing") == []
    # A tag added while the viewer runs changes neither status nor priority: the page and the API
    # each see it on their first read after it.
    assert command("micontrol", ["tag", family["other"], "clone"], capsys)[0] == 0
    page = client.get("/trainings?tag=clone&col=name&col=tags").text
    table = page.split('id="trainings"')[1].split("</table>")[0]
    assert family["child"] in table and family["other"] in table and family["parent"] not in table
    assert 'class="tag" href="/trainings?tag=clone"' in table
    assert command("micontrol", ["tag", family["other"], "baseline"], capsys)[0] == 0
    assert sorted(tagged("baseline")) == sorted([family["parent"], family["other"]])
    # A tag with markup and a comma: filtered on whole, shown as text.
    marked = f"{XSS}, draft"
    assert command("micontrol", ["tag", family["child2"], marked], capsys)[0] == 0
    assert tagged(quote(marked)) == [family["child2"]]
    page = client.get(f"/trainings?tag={quote(marked)}&col=tags").text
    assert family["child2"] in page and XSS not in page and "&lt;script&gt;window.__xss=1&lt;/script&gt;, draft" in page
    bad = client.get("/api/trainings?tag=a%0Ab")
    assert bad.status_code == 400 and "tag must be one line of text" in bad.json()["error"]
    assert client.get("/trainings?tag=%20").status_code == 400


def test_labels_are_the_only_fields_manage_writes_outside_transitions(home: dict) -> None:
    from mitorch.service import manage

    store = open_store()
    training_id = store.add_training({"config": CONFIG})
    with pytest.raises(ValueError, match="only tags, note are written here"):
        manage._write_labels(store, training_id, {"tags": ["a"], "status": "completed"})
    assert store.get_training(training_id)["status"] == "new" and "tags" not in store.get_training(training_id)
