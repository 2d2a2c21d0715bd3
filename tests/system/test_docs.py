"""The README is the front door, and the reference in docs/ builds as a site with no broken link."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: A Markdown link or image: ``[text](target)``, the target without a title.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/ built by ``mkdocs build --strict``, as .ci/run builds it."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (lower case, punctuation dropped)."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def page_html(site: Path, page: str) -> str:
    """The HTML mkdocs wrote for ``page`` (a path under docs/), with directory URLs."""
    name = page.removesuffix(".md")
    built = site / "index.html" if name == "index" else site / name / "index.html"
    return built.read_text(encoding="utf-8")


def test_the_readme_is_at_most_300_lines() -> None:
    """The README stays a front door: 300 lines at most; the reference is in docs/."""
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move the reference into docs/"


def test_the_readmes_test_command_is_the_one_ci_runs() -> None:
    """The README's test command stands word for word in .ci/run, followed by the docs build."""
    readme = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/pytest"
    assert f"```sh\n{command}\n```" in readme
    assert command in ci
    assert ci.index(command) < ci.index(".venv/bin/mkdocs build --strict")


def test_the_docs_build_strict_with_every_page_in_the_nav(site: Path) -> None:
    """``mkdocs build --strict`` passes (mkdocs.yml makes a page left out of the nav, a missing
    page or a missing anchor fail it), and every page of docs/ is built."""
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert "index.md" in pages
    for page in pages:
        assert "<h1" in page_html(site, page), page


def leads_nowhere(target: str, headings: set[str], site: Path) -> bool:
    """Whether a relative link of the README misses its file, or the anchor in it."""
    path, _, anchor = unquote(target).partition("#")
    if not path:
        return anchor not in headings
    if not (ROOT / path).exists():
        return True
    if anchor and path.startswith("docs/") and path.endswith(".md"):
        return f'id="{anchor}"' not in page_html(site, path.removeprefix("docs/"))
    return False


def test_every_link_in_the_readme_reaches_its_file_and_anchor(site: Path) -> None:
    """A relative link in the README names a file of the repository; into docs/, the built
    page has the anchor; to the README itself, one of its headings."""
    readme = README.read_text(encoding="utf-8")
    lines = readme.splitlines()
    headings = {github_anchor(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line)}
    # An absolute URL has nothing in this repository to check.
    targets = [t for t in LINK.findall(readme) if not re.match(r"[a-z]+:", t)]
    assert targets, "the README links into docs/"
    broken = [t for t in targets if leads_nowhere(t, headings, site)]
    assert broken == [], f"README.md links that lead nowhere: {broken}"
