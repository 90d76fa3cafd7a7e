"""The server entry point (`python -m chatsite.serve`, what `make run` starts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
from chatsite.serve import use_uvloop
use_uvloop()
import django
django.setup()  # imports daphne.server (INSTALLED_APPS), which makes the loop daphne runs
import chatsite.asgi  # the application, as daphne loads it
import daphne.server
print(type(daphne.server.twisted_loop).__module__)
"""


def test_daphne_runs_on_uvloop_when_started_through_serve(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env={"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("uvloop")


def test_serve_refuses_once_daphne_made_its_loop(tmp_path):
    probe = "import daphne.server\nfrom chatsite.serve import use_uvloop\nuse_uvloop()"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "already imported" in done.stderr
