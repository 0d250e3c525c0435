"""README.md stays short, and every relative link in README.md and docs/ points to a file that exists.

A cheap check without MkDocs (CI also builds the site strictly: `mkdocs build --strict` in .ci/run,
which checks anchors and the API reference too).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12 * 1024  # bytes: what it is, install, three commands, the headline figure, links

# [text](target) or [text](target "title"); images too. Text may span lines; code is stripped first.
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^ *(```|~~~).*?^ *\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)


def markdown_files():
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(markdown: str) -> list[str]:
    """The relative link targets of Markdown text, anchors and queries removed (code ignored)."""
    text = CODE_SPAN.sub("", FENCE.sub("", markdown))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
            continue  # http:, https:, mailto: ...; same-page anchors; site-absolute paths
        target = target.split("#", 1)[0].split("?", 1)[0]
        if target:
            targets.append(target)
    return targets


def test_readme_is_short():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, (
        f"README.md is {size} bytes, over {README_LIMIT}: move the detail into a docs/ page and link it")


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(path):
    missing = [t for t in relative_links(path.read_text(encoding="utf-8")) if not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_the_link_check_sees_links():
    """The expressions find what they should, so an empty result above means something."""
    text = ("a [b\n c](x.md#y) `[no](code.md)` ![img](p.png) [web](https://e.org) [same](#z) [t](q.md \"T\")\n"
            "```bash\n[no](f.md)\n```\n")
    assert relative_links(text) == ["x.md", "p.png", "q.md"]
    assert "docs/model-card.md" in relative_links((ROOT / "README.md").read_text(encoding="utf-8"))
