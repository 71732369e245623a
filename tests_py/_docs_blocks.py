"""The fenced code blocks of the Markdown docs, as the docs tests see them.

Shared by test_docs_examples.py (every block of README.md, CONTRIBUTING.md and
docs/*.md) and test_readme.py (the README's quickstart, run against a real server).
A block is a *fragment* when the line just above its opening fence is an HTML comment
``<!-- fragment: why -->`` (CONTRIBUTING.md, "Docs whose examples run").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
# A fragment marker states its reason; MARKER finds any attempt at one.
FRAGMENT = re.compile(r"^\s*<!--\s*fragment:\s*\S.*-->\s*$")
MARKER = re.compile(r"<!--\s*fragment\b")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str  # the info string's first word, lower case ("" if none)
    code: str
    fragment: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def lines(self) -> range:
        """The page's line numbers from the opening fence to the closing one."""
        return range(self.line, self.line + self.code.count("\n") + 2)


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order (CommonMark fences: ``` or ~~~)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = FENCE.match(lines[i])
            if (
                close
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            body.append(lines[i])
            i += 1
        else:
            raise AssertionError(f"{page.relative_to(ROOT)}:{start + 1}: unclosed code fence")
        fragment = start > 0 and bool(FRAGMENT.match(lines[start - 1]))
        lang = info.split()[0].lower() if info else ""
        found.append(Block(page, start + 1, lang, "\n".join(body) + "\n", fragment))
        i += 1
    return found


def python_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang == "python"]
