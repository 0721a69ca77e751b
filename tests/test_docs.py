"""The documentation: the MkDocs site builds with no warning, every page is in its navigation, the
README stays a front page and its Layout names every module.

Strict mode turns every broken link and missing anchor between pages into a failure; it does not
check what the pages say.
"""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250


def _nav_pages(nav) -> set[str]:
    """Every page a MkDocs `nav` names, however deeply nested."""
    pages: set[str] = set()
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                pages |= _nav_pages(value)
            else:
                pages.add(value)
    return pages


def test_site_builds_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs_dir = ROOT / config.get("docs_dir", "docs")
    pages = {p.relative_to(docs_dir).as_posix() for p in docs_dir.rglob("*.md")}
    nav = _nav_pages(config["nav"])
    assert pages - nav == set(), "pages missing from mkdocs.yml's nav"
    assert nav - pages == set(), "nav entries with no page"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_the_readme_layout_names_every_module():
    """Every module of the packages and scripts is named in the README's Layout section (it had fallen
    40 modules behind once)."""
    import re

    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", layout))
    modules = [
        p
        for folder in ("cli", "server", "server/routes", "server/store", "models", "models/demo", "ui", "scripts")
        for p in sorted((ROOT / folder).glob("*.py"))
        if not p.stem.startswith("__")
    ]
    missing = [str(p.relative_to(ROOT)) for p in modules if p.stem not in named]
    assert not missing, f"not in the README's Layout: {missing}"
