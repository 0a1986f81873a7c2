"""Every relative link in the project's Markdown files leads somewhere.

Files move (the layout changes, a README is split into docs/), and a link that pointed at the
old place keeps rendering as a link while leading nowhere. These tests read every tracked
`*.md` file, take each inline link `[text](target)` or `[text](target#anchor)` outside code,
and check that the target exists relative to the file, and that an `#anchor` into a Markdown
file names one of its headings by GitHub's slug rules. Web links (`http:`, `https:`,
`mailto:`) and links to an anchor of the same file (`#...`) are not checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, NamedTuple
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Corpus files of the malformed-input campaign are test data, not documentation.
EXCLUDED = ("tests/robustness/fuzz",)
EXTERNAL = ("http://", "https://", "mailto:")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# An inline code span: backticks, then anything up to as many backticks, within a paragraph.
INLINE_CODE = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", re.S)
# [text](target) or ![alt](target), with an optional "title"; the text may hold one level of
# brackets and line breaks, and the target may be wrapped in <...>.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)\s*$")


class Link(NamedTuple):
    source: Path  # the Markdown file, relative to the repository
    line: int
    target: str   # as written

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: ({self.target})"


def markdown_files() -> list[Path]:
    """The tracked Markdown files, relative to the repository root."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    listed = subprocess.run(["git", "ls-files", "-z", "--", "*.md"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    return [Path(name) for name in listed.split("\0")
            if name and not name.startswith(EXCLUDED) and (ROOT / name).is_file()]


def outside_fences(text: str) -> list[str]:
    """The text's lines, with fenced code blocks (fences included) emptied; line numbers stay."""
    lines, fence = [], ""
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            lines.append("")
        elif opened:
            fence = opened.group(1)
            lines.append("")
        else:
            lines.append(line)
    return lines


def prose(text: str) -> str:
    """The text outside code: fenced blocks emptied, inline code spans blanked (their line
    breaks kept, so offsets still give line numbers)."""
    return INLINE_CODE.sub(lambda span: re.sub(r"[^\n]", " ", span.group(0)),
                           "\n".join(outside_fences(text)))


def links_in(path: Path, text: str) -> list[Link]:
    body = prose(text)
    return [Link(path, body.count("\n", 0, match.start()) + 1, match.group(1).strip("<>"))
            for match in LINK.finditer(body)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lower-cased, with every character that
    is not a letter, a digit, a space, `-` or `_` dropped and spaces made hyphens."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # links
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # emphasis underscores, not snake_case
    kept = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a Markdown text, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    previous = ""
    for line in outside_fences(text):
        heading = HEADING.match(line)
        underline = SETEXT_UNDERLINE.match(line)
        title = heading.group(2) if heading else (
            previous.strip() if underline and previous.strip() else None)
        previous = line
        if title is None:
            continue
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def checked_links(root: Path, files: list[Path]) -> Iterator[tuple[Link, Path, str]]:
    """(link, the path it resolves to, its anchor) for every relative link in `files`."""
    for path in files:
        for link in links_in(path, (root / path).read_text(encoding="utf-8")):
            if link.target.startswith(EXTERNAL) or link.target.startswith("#"):
                continue
            target, _, anchor = link.target.partition("#")
            target = unquote(target.split("?", 1)[0])
            # A leading `/` is the repository's root, as GitHub reads it.
            resolved = root / target.lstrip("/") if target.startswith("/") \
                else root / path.parent / target
            yield link, resolved, unquote(anchor)


def broken_targets(root: Path, files: list[Path]) -> list[str]:
    return [str(link) for link, resolved, _ in checked_links(root, files)
            if not resolved.exists()]


def broken_anchors(root: Path, files: list[Path]) -> list[str]:
    headings: dict[Path, set[str]] = {}
    broken = []
    for link, resolved, anchor in checked_links(root, files):
        if not anchor or resolved.suffix.lower() != ".md" or not resolved.is_file():
            continue
        if resolved not in headings:
            headings[resolved] = anchors(resolved.read_text(encoding="utf-8"))
        if anchor.lower() not in headings[resolved]:
            broken.append(f"{link}: no heading with anchor #{anchor}")
    return broken


def test_every_relative_link_in_the_markdown_files_points_to_a_file_that_exists():
    """A moved or renamed file leaves links to its old place; this finds each one."""
    broken = broken_targets(ROOT, markdown_files())
    assert not broken, "links to files or folders that do not exist:\n" + "\n".join(broken)


def test_every_anchor_into_a_markdown_file_names_one_of_its_headings():
    """A section that was renamed or moved to another document leaves `#anchor` links that
    open the right file at the wrong place; this finds each one."""
    broken = broken_anchors(ROOT, markdown_files())
    assert not broken, "links to headings that do not exist:\n" + "\n".join(broken)


def test_the_checker_finds_broken_links_and_anchors_and_ignores_code_and_web_links(tmp_path):
    """The two checks above pass vacuously if the checker sees no links; prove it sees them."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## The OpenAI API's cost\n\n### Errors\n\n### Errors\n")
    (tmp_path / "README.md").write_text("\n".join([
        "[guide](docs/guide.md) [cost](docs/guide.md#the-openai-apis-cost)",
        "[second errors](docs/guide.md#errors-1) [folder](docs/) [self](#anything)",
        "[web](https://example.com/nowhere.md) `[code](nowhere.md)`",
        "```", "[fenced](nowhere.md)", "```",
        "[gone](docs/missing.md) [bad anchor](docs/guide.md#no-such-heading)",
    ]))
    files = [Path("README.md")]
    assert broken_targets(tmp_path, files) == ["README.md:7: (docs/missing.md)"]
    assert broken_anchors(tmp_path, files) == [
        "README.md:7: (docs/guide.md#no-such-heading): no heading with anchor #no-such-heading"]


@pytest.mark.parametrize("heading, anchor", [
    ("Replicas, fallback and limits across gateways",
     "replicas-fallback-and-limits-across-gateways"),
    ("On the demo model: `make bench`", "on-the-demo-model-make-bench"),
    ("Against llama.cpp's server (demo model)", "against-llamacpps-server-demo-model"),
    ("Server bugs this campaign found (fixed in `gateway/generate_parameters.lua`)",
     "server-bugs-this-campaign-found-fixed-in-gatewaygenerate_parameterslua"),
    ("A tail in bursts, and why `llm_stream` has two instances",
     "a-tail-in-bursts-and-why-llm_stream-has-two-instances"),
    ("[textgen/](textgen/README.md) and **tests**", "textgen-and-tests"),
])
def test_heading_anchors_follow_githubs_slug_rules(heading, anchor):
    """An anchor checked against the wrong slug rules would pass here and break on GitHub."""
    assert slug(heading) == anchor
