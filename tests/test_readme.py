"""The README stays a short entry point (details go to docs/*.md): at most 250 lines, and every docs page it
links exists."""

import re

from helpers.setup import REPO

MAX_LINES = 250


def test_readme_is_short_and_its_doc_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"README.md has {len(text.splitlines())} lines (max {MAX_LINES})"
    links = set(re.findall(r"\]\(((?:docs|notebooks)/[^)#\s]+)", text))
    assert links, "the README links no docs page"
    missing = sorted(link for link in links if not (REPO / link).exists())
    assert not missing, missing
