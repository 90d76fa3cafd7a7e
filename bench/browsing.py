"""Benchmark: browsing speed with 10,000 conversations and one of 2,000 messages.

One person has 10,000 conversations and one conversation of 2,000 messages
(1,000 questions and 1,000 markdown answers). Measured in-process with Django's
test client against a fresh database: the chat page of the long conversation,
a sidebar page (the first one, and one deep in the list), and a search. Each is
requested REPEAT times after a warm-up; median and 95th percentile, and the
number of SQL queries per request. Target: every median ≤ 50 ms.

    python bench/browsing.py [--postgres] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, write_section  # noqa: E402

SECTION = "## Browsing: 10,000 conversations, one of 2,000 messages"
CONVERSATIONS = 10_000
LONG_MESSAGES = 2_000
REPEAT = 30
ANSWER = """Here is a **summary** with a list:

- first point about {n}
- second point

```python
def answer_{n}():
    return {n}
```
"""


def setup(postgres: bool) -> str:
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="chat-bench-browse-")
    os.environ.pop("REDIS_URL", None)
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"
    os.environ["CHAT_GENERATE_TITLES"] = "false"
    label = "SQLite (the embedded default)"
    if postgres:
        import psycopg

        name = f"chat_bench_browse_{os.getpid()}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            admin.execute(f'CREATE DATABASE "{name}"')
        os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{name}"
        label = "PostgreSQL 15 (GIN full-text indexes)"
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return label


def seed():
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from conversations.models import Conversation, Message

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    now = timezone.now()
    words = ["budget", "travel", "recipe", "python", "garden", "music", "physics", "history"]
    conversations = [
        Conversation(
            owner=user, model="claude-haiku-4-5-20251001", params={"max_tokens": 4096},
            title=f"{words[n % len(words)].title()} question {n}", updated_at=now - datetime.timedelta(minutes=n),
        )
        for n in range(CONVERSATIONS)
    ]
    Conversation.objects.bulk_create(conversations, batch_size=1000)
    small = list(Conversation.objects.filter(owner=user).order_by("pk").values_list("pk", flat=True))
    Message.objects.bulk_create(
        [
            Message(conversation_id=pk, role="user", content=[{"type": "text", "text": f"About {words[i % 8]} number {i}"}],
                    search_text=f"About {words[i % 8]} number {i}", status="complete")
            for i, pk in enumerate(small)
        ],
        batch_size=1000,
    )
    long = Conversation.objects.create(owner=user, model="claude-haiku-4-5-20251001", title="The long one")
    parent = None
    for n in range(LONG_MESSAGES):
        role = "user" if n % 2 == 0 else "assistant"
        text = f"Question {n} about the zeppelin timetable" if role == "user" else ANSWER.format(n=n)
        parent = Message.objects.create(
            conversation=long, role=role, content=[{"type": "text", "text": text}], status="complete", parent=parent,
            input_tokens=100, output_tokens=200, model="claude-haiku-4-5-20251001",
        )
    Conversation.objects.filter(pk=long.pk).update(current_leaf=parent)
    from django.db import connection

    if connection.vendor == "postgresql":  # as autovacuum would have by now: planner statistics
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return user, long


def measure(client, url: str, params: dict | None = None) -> tuple[float, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url, params)  # warm-up
    client.get(url, params)
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        response = client.get(url, params)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    with CaptureQueriesContext(connection) as queries:
        client.get(url, params)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], len(queries)


def run(postgres: bool) -> tuple[str, list[tuple[str, float, float, int]]]:
    label = setup(postgres)
    user, long = seed()
    from django.test import Client

    from conversations import browsing

    client = Client()
    client.force_login(user)
    deep = browsing.sidebar_page(user)
    for _ in range(60):  # 60 pages down: about 3,000 conversations into the list
        deep = browsing.sidebar_page(user, deep.next_cursor)
    rows = [
        ("chat page of the 2,000-message conversation", *measure(client, long.get_absolute_url())),
        ("sidebar, first page (50)", *measure(client, "/conversations/")),
        ("sidebar, a page 3,000 conversations down", *measure(client, "/conversations/", {"cursor": deep.next_cursor})),
        ("search “zeppelin timetable”", *measure(client, "/search/", {"q": "zeppelin timetable"})),
        ("search “garden”", *measure(client, "/search/", {"q": "garden"})),
    ]
    return label, rows


def report(label: str, rows) -> str:
    table = "\n".join(f"| {name} | {median:.1f} ms | {p95:.1f} ms | {queries} |" for name, median, p95, queries in rows)
    worst = max(median for _, median, _, _ in rows)
    return f"""{SECTION} ({label})

`make bench` (`bench/browsing.py`), {datetime.date.today().isoformat()}, on {machine()}.

One person with {CONVERSATIONS:,} conversations and one conversation of {LONG_MESSAGES:,} messages (half
of them markdown answers with a list and a code block). Django's test client in
process, {REPEAT} requests each after a warm-up. The chat page shows the last 50
messages of the visible branch ("Show earlier messages" loads 50 more); the
sidebar is keyset-paginated (no OFFSET) and never loads message bodies. A
finished message's HTML is kept per process (keyed by its data), so these are
warm views; the first view after a restart renders the 50 messages once.

| request | median | p95 | SQL queries |
|---|---|---|---|
{table}

Target (every median ≤ 50 ms): **{"met" if worst <= 50 else "NOT met"}** (slowest median {worst:.1f} ms).
The query counts do not depend on the amount of data (tests assert them with
`django_assert_max_num_queries`).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    label, rows = run(args.postgres)
    if args.postgres:  # leave no benchmark database behind
        import psycopg
        from django.db import connection

        name = connection.settings_dict["NAME"]
        connection.close()
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    section = report(label, rows)
    print(section)
    write_section(Path(args.out), f"{SECTION} ({label})", section)


if __name__ == "__main__":
    main()
