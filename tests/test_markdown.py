"""Model output is untrusted: one sanitizing path, rendered incrementally."""

import random
from html.parser import HTMLParser

import pytest

from conversations.markdown import StreamingMarkdown, render

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    "![img](javascript:alert(1))",
    '<iframe src="https://evil.example"></iframe>',
    "<svg onload=alert(1)>",
    "[x](JaVaScRiPt:alert(1))",
    "[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    '<div style="background:url(javascript:alert(1))">s</div>',
]


class ElementCollector(HTMLParser):
    """The elements and attributes a browser would build from the HTML."""

    def __init__(self):
        super().__init__()
        self.elements = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def elements(html):
    collector = ElementCollector()
    collector.feed(html)
    return collector.elements


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_markup_never_survives(source):
    for tag, attrs in elements(render(source)):
        assert tag not in {"script", "iframe", "svg", "div", "object", "embed", "style"}
        assert not [name for name in attrs if name.startswith("on")]
        for name in ("href", "src"):
            url = (attrs.get(name) or "").strip().lower()
            assert not url.startswith(("javascript:", "data:", "vbscript:"))
        assert "url(" not in (attrs.get("style") or "")


def test_raw_html_is_shown_as_text():
    assert render("<b>hi</b>") == "<p>&lt;b&gt;hi&lt;/b&gt;</p>\n"


def test_markdown_features_render():
    html = render("# Title\n\n**bold** *em* `code` ~~gone~~\n\n- a\n- b\n\n| h |\n|---|\n| c |\n\n[link](https://example.com)")
    for fragment in ("<h1>Title</h1>", "<strong>bold</strong>", "<em>em</em>", "<code>code</code>", "<s>gone</s>", "<li>a</li>", "<td>c</td>"):
        assert fragment in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">link</a>' in html


def test_code_blocks_are_highlighted_and_escaped():
    html = render("```python\nprint('<b>hi</b>')\n```")
    assert 'class="language-python"' in html and "hl-nb" in html
    assert "&lt;b&gt;" in html and "<b>" not in html


def test_unknown_language_is_plain_escaped_code():
    html = render("```nosuchlang\n<x>\n```")
    assert "&lt;x&gt;" in html


SAMPLE = """Intro paragraph
continues here.

## Heading

- one
- two

  still two

1. first
2. second

```js
let a = 1;

let b = 2;
```

> quoted
> more

| a | b |
|---|---|
| 1 | 2 |

Final *words*."""


def stream(text, sizes):
    renderer = StreamingMarkdown()
    appended, position = [], 0
    for size in sizes:
        renderer.feed(text[position : position + size])
        position += size
        append, _tail = renderer.flush()
        appended.append(append)
    renderer.feed(text[position:])
    appended.append(renderer.finish())
    return "".join(appended)


@pytest.mark.parametrize("seed", range(5))
def test_streamed_rendering_matches_the_full_rendering(seed):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 12) for _ in range(len(SAMPLE))]
    assert stream(SAMPLE, sizes) == render(SAMPLE)


@pytest.mark.parametrize("seed", range(3))
def test_final_html_of_a_stream_is_the_full_rendering(seed):
    rng = random.Random(seed)
    renderer, position = StreamingMarkdown(), 0
    while position < len(SAMPLE):
        size = rng.randint(1, 30)
        renderer.feed(SAMPLE[position : position + size])
        position += size
        if rng.random() < 0.5:  # flushes come and go; text may arrive after the last one
            renderer.flush()
    assert renderer.final_html() == render(SAMPLE)


def test_character_by_character_stream_matches_too():
    assert stream(SAMPLE, [1] * len(SAMPLE)) == render(SAMPLE)


def test_finished_blocks_are_handed_out_once_and_the_tail_stays_small():
    renderer = StreamingMarkdown()
    paragraphs = [f"Paragraph number {i} with some words." for i in range(200)]
    longest_tail = 0
    for paragraph in paragraphs:
        renderer.feed(paragraph + "\n\n")
        _append, tail = renderer.flush()
        longest_tail = max(longest_tail, len(renderer.text) - renderer.committed)
    assert longest_tail < 100, "only the unfinished last block is re-rendered"
    assert renderer.committed > len(renderer.text) - 100


def test_snapshot_is_committed_part_and_tail():
    renderer = StreamingMarkdown()
    renderer.feed("First block.\n\nSecond bl")
    renderer.flush()
    html, tail = renderer.snapshot()
    assert html == render("First block.\n\n") and tail == render("Second bl")


async def test_large_tails_are_rendered_by_a_helper_process_with_the_same_result(settings):
    from conversations import render_pool
    from conversations.markdown import render_tail

    settings.CHAT_RENDER_PROCESSES = 1
    big = SAMPLE * 3  # ends in an unfinished paragraph, well over SMALL_TAIL
    small = "Just *a few* words"
    assert len(big) >= render_pool.SMALL_TAIL > len(small)
    await render_pool.start()  # what the first answer of a process does, without waiting
    assert render_pool._pool is not None
    results = await render_pool.render_tails([big, small])
    assert results == [render_tail(big), render_tail(small)]
    cut, append, tail = results[0]
    assert 0 < cut < len(big) and append + tail == render(big)


async def test_when_helper_processes_cannot_run_tails_are_rendered_here(settings, monkeypatch):
    from concurrent.futures import ProcessPoolExecutor

    from conversations import render_pool
    from conversations.markdown import render_tail

    settings.CHAT_RENDER_PROCESSES = 1
    unusable = ProcessPoolExecutor(max_workers=1)
    unusable.shutdown()  # submitting now raises, as when helpers cannot start
    monkeypatch.setattr(render_pool, "_pool", unusable)
    monkeypatch.setattr(render_pool, "_unavailable", False)
    big = SAMPLE * 3
    assert await render_pool.render_tails([big]) == [render_tail(big)]
    assert render_pool._unavailable and render_pool._pool is None
    await render_pool.start()  # and no new helpers are tried
    assert render_pool._pool is None


async def test_a_helper_process_that_dies_is_replaced_and_the_tail_still_rendered(settings):
    import asyncio

    from conversations import render_pool
    from conversations.markdown import render_tail

    settings.CHAT_RENDER_PROCESSES = 1
    await render_pool.start()
    dead = render_pool._pool
    for process in list(dead._processes.values()):
        process.kill()
    big = SAMPLE * 3
    assert await render_pool.render_tails([big]) == [render_tail(big)]
    for _ in range(100):  # new helpers start in the background
        if render_pool._pool not in (None, dead):
            break
        await asyncio.sleep(0.05)
    assert render_pool._pool not in (None, dead)
    assert await render_pool.render_tails([big]) == [render_tail(big)]


HELPER_OWNER = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
import django
django.setup()
from multiprocessing import forkserver
from conversations import render_pool
render_pool._start_pool()
print(*render_pool._pool._processes, forkserver._forkserver._forkserver_pid, flush=True)
sys.stdin.read()
"""


def test_helper_processes_end_when_the_server_is_killed(tmp_path):
    """A killed server never shuts its pool down: its helpers (and their
    forkserver) must not wait for work forever, one set per restart."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-c", HELPER_OWNER],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    helpers = [int(pid) for pid in server.stdout.readline().split()]
    assert len(helpers) == 2 and all(_alive(pid) for pid in helpers)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in helpers)


def _alive(pid: int) -> bool:
    """Running (a zombie whose parent has not reaped it yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
