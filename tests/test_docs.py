"""The docs hold together: docs/ builds under `mkdocs build --strict` (no broken link or anchor, no
page left out of the nav), the README's links into docs/ resolve, the quickstart's test command is
the one CI runs, and the quickstart's `pip install .` ships every package of the code."""
from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# [text](target): the README's Markdown links (its code blocks hold none)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _headings_anchors(page: Path) -> set[str]:
    anchors, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#+ (.+)", line)):
            anchors.add(slugify(heading.group(1).replace("`", ""), "-"))
    return anchors


def _readme_doc_links() -> list[str]:
    return [target for target in LINK.findall(README.read_text()) if target.startswith("docs/")]


def test_the_docs_build_strictly(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "commands" / "index.html").exists()


def test_the_readmes_links_into_docs_resolve() -> None:
    links = _readme_doc_links()
    assert links, "the README links to no page of docs/"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        page = ROOT / path
        if not page.is_file() or (anchor and anchor not in _headings_anchors(page)):
            broken.append(link)
    assert not broken, f"README links that lead nowhere: {broken}"


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in _readme_doc_links()}
    pages = {page.resolve() for page in (ROOT / "docs").rglob("*.md")}
    assert pages - linked == set(), "docs pages the README's list does not link"


def test_the_quickstarts_test_command_is_what_ci_runs() -> None:
    readme = README.read_text()
    quickstart = readme[readme.index("## Quickstart"):]
    block = quickstart[quickstart.index("```bash"):quickstart.index("```", quickstart.index("```bash") + 3)]
    commands = [line for line in block.splitlines()[1:] if line and not line.startswith("#")]
    assert commands[-1] == "scripts/test"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set "))]
    assert ci == ['exec "$(dirname "$0")/../scripts/test"']
    assert (ROOT / "scripts" / "test").stat().st_mode & 0o111, "scripts/test must be executable"


def test_the_installed_package_carries_every_package_of_the_code() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    found = {init.parent.relative_to(ROOT).as_posix().replace("/", ".")
             for top in ("mitorch", "hydra_plugins") for init in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set(), "packages missing from setup.cfg's [options] packages"
    assert listed - found == {"mitorch.conf"}, "setup.cfg lists packages the code does not have"
