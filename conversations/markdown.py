"""Markdown for model output: the one sanitizing path.

Model output is untrusted. markdown-it-py renders it with raw HTML disabled,
Pygments highlights fenced code, and nh3 sanitizes the result against an
allow-list, so no script, event handler or `javascript:` URL survives.

`StreamingMarkdown` renders a growing answer in linear time: blocks that can
no longer change are rendered once and handed out as `append` HTML; only the
unfinished last block (the tail) is rendered again on each flush.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

_FORMATTER = HtmlFormatter(nowrap=True, classprefix="hl-")

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s",
    "code", "pre", "span", "blockquote", "ul", "ol", "li", "a", "img",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "code": {"class"},
    "pre": {"class", "data-lang"},
    "span": {"class"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}
URL_SCHEMES = {"http", "https", "mailto"}


def _highlight(code: str, lang: str, _attrs: str) -> str:
    if lang:
        try:
            lexer = get_lexer_by_name(lang.split()[0])
        except ClassNotFound:
            return ""
        return pygments_highlight(code, lexer, _FORMATTER)
    return ""  # markdown-it escapes it as plain text


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.options["highlight"] = _highlight
    return md


def _sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
    )


def render(text: str) -> str:
    """Markdown text (untrusted) → safe HTML."""
    if not text:
        return ""
    return _sanitize(_parser().render(text))


@lru_cache(maxsize=4096)
def render_finished(text: str) -> str:
    """render() for text that no longer changes (saved answers): pages that show
    a long conversation again and again render each answer once per process."""
    return render(text)


def _render_tokens(tokens: list) -> str:
    if not tokens:
        return ""
    md = _parser()
    return _sanitize(md.renderer.render(tokens, md.options, {}))


def _offset_of_line(text: str, line: int) -> int:
    offset = 0
    for _ in range(line):
        offset = text.index("\n", offset) + 1
    return offset


class StreamingMarkdown:
    """Incremental renderer for one growing block of markdown text."""

    def __init__(self) -> None:
        self.text = ""
        self.committed = 0  # text[:committed] is rendered and final

    def feed(self, delta: str) -> None:
        self.text += delta

    def flush(self) -> tuple[str, str]:
        """Return (append_html, tail_html) for what changed since the last flush.

        `append_html` holds blocks that became final: the client appends them
        once. `tail_html` is the current rendering of the unfinished last block:
        the client replaces its tail with it. The tail is parsed once: a
        top-level block is final once another top-level block has started after
        it, and markdown-it's block tokens tell where each one begins.
        """
        tail = self.text[self.committed :]
        if not tail:
            return "", ""
        tokens = _parser().parse(tail)
        starts = [(i, t.map[0]) for i, t in enumerate(tokens) if t.level == 0 and t.nesting != -1 and t.map]
        if len(starts) < 2:
            return "", _render_tokens(tokens)
        split, line = starts[-1]
        self.committed += _offset_of_line(tail, line)
        return _render_tokens(tokens[:split]), _render_tokens(tokens[split:])

    def finish(self) -> str:
        """Render what is left once the block is complete."""
        append = render(self.text[self.committed :])
        self.committed = len(self.text)
        return append

    def snapshot(self) -> tuple[str, str]:
        """(html of everything final so far, html of the tail): for a late joiner."""
        return render(self.text[: self.committed]), render(self.text[self.committed :])
