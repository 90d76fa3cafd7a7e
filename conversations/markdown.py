"""Markdown for model output: the one sanitizing path.

Model output is untrusted. markdown-it-py renders it with raw HTML disabled,
Pygments highlights fenced code, and nh3 sanitizes the result against an
allow-list, so no script, event handler or `javascript:` URL survives.

`StreamingMarkdown` renders a growing answer in linear time: blocks that can
no longer change are rendered once and handed out as `append` HTML; only the
unfinished last block (the tail) is rendered again on each flush.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import nh3
from cachetools import LRUCache, cached
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


@lru_cache(maxsize=128)
def _lexer(name: str):
    """Pygments lexer for a fence's language name, or None (looked up once per name:
    a streaming answer's code block is highlighted again on every rendering)."""
    try:
        return get_lexer_by_name(name)
    except ClassNotFound:
        return None


def _highlight(code: str, lang: str, _attrs: str) -> str:
    lexer = _lexer(lang.split()[0]) if lang.strip() else None
    if lexer is None:
        return ""  # markdown-it escapes it as plain text
    return pygments_highlight(code, lexer, _FORMATTER)


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


_finished: LRUCache = LRUCache(maxsize=4096)
_finished_lock = threading.Lock()


@cached(_finished, key=lambda text: text, lock=_finished_lock)
def render_finished(text: str) -> str:
    """render() for text that no longer changes (saved answers): pages that show
    a long conversation again and again render each answer once per process."""
    return render(text)


def remember_finished(text: str, html: str) -> None:
    """Give render_finished() a rendering already made: a streamed answer's
    blocks and final tail (StreamingMarkdown.final_html) are its rendering."""
    with _finished_lock:
        _finished[text] = html


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


def render_tail(tail: str) -> tuple[int, str, str]:
    """(length of the finished blocks that `tail` starts with, their HTML, the
    HTML of the unfinished rest). The text is parsed once: a top-level block is
    finished once another top-level block has started after it, and
    markdown-it's block tokens tell where each one begins. A pure function of
    its text, so that it can run in another process (generation.py)."""
    tokens = _parser().parse(tail) if tail else []
    starts = [(i, t.map[0]) for i, t in enumerate(tokens) if t.level == 0 and t.nesting != -1 and t.map]
    if len(starts) < 2:
        return 0, "", _render_tokens(tokens)
    split, line = starts[-1]
    return _offset_of_line(tail, line), _render_tokens(tokens[:split]), _render_tokens(tokens[split:])


class StreamingMarkdown:
    """Incremental renderer for one growing block of markdown text.

    `flush()` renders in this process; to render elsewhere, take `unfinished()`,
    run render_tail() on it, and hand the result to `apply()`."""

    def __init__(self) -> None:
        self.text = ""
        self.committed = 0  # text[:committed] is rendered and final
        self.committed_html: list[str] = []
        self.tail_html = ""
        self.rendered = 0  # text[:rendered] is in committed_html + tail_html

    def feed(self, delta: str) -> None:
        self.text += delta

    def flush(self) -> tuple[str, str]:
        """Return (append_html, tail_html) for what changed since the last flush.

        `append_html` holds blocks that became final: the client appends them
        once. `tail_html` is the current rendering of the unfinished last block:
        the client replaces its tail with it.
        """
        upto, tail = self.unfinished()
        return self.apply(render_tail(tail), upto)

    def unfinished(self) -> tuple[int, str]:
        """(length of the text now, its unfinished part): what to render next."""
        return len(self.text), self.text[self.committed :]

    def apply(self, rendered: tuple[int, str, str], upto: int) -> tuple[str, str]:
        """Take render_tail()'s result for the unfinished part of text[:upto]
        (more text may have arrived since); returns (append_html, tail_html)."""
        cut, append, tail_html = rendered
        self.committed += cut
        self.rendered = upto
        if append:
            self.committed_html.append(append)
        self.tail_html = tail_html
        return append, tail_html

    def final_html(self) -> str:
        """The whole text's HTML, once it is complete: the blocks handed out
        and the tail (rendered again only if text came after the last flush).
        It equals render(self.text)."""
        if self.rendered != len(self.text):
            self.flush()
        return "".join(self.committed_html) + self.tail_html

    def finish(self) -> str:
        """Render what is left once the block is complete."""
        append = render(self.text[self.committed :])
        self.committed = len(self.text)
        return append

    def snapshot(self) -> tuple[str, str]:
        """(html of everything final so far, html of the tail): for a late joiner."""
        return render(self.text[: self.committed]), render(self.text[self.committed :])
