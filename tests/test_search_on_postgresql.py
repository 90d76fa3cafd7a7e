"""The same search tests against PostgreSQL (GIN indexes, to_tsvector)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
URL = "postgres://postgres@127.0.0.1:5432/chat_search"


def postgres_reachable() -> bool:
    try:
        import psycopg

        psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3).close()
        return True
    except Exception:
        return False


def test_search_works_on_postgresql():
    if not postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail("CI is set but PostgreSQL at 127.0.0.1:5432 is not reachable")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    env = {**os.environ, "DATABASE_URL": URL}
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_search.py", "-q", "-p", "no:cacheprovider", "--create-db"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
