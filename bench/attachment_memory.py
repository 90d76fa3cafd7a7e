"""Benchmark: peak memory growth of the server while it sends a conversation
that carries 30 MB of PDFs upstream.

One daphne process (SQLite, in-memory channel layer) talks to the loopback fake
upstream. Three 10 MB PDFs are uploaded, the server is restarted (so upload
handling does not count), one small message warms it up, then one message
carrying the three PDFs is sent. The growth is the process's peak resident
memory (VmHWM) after the send minus its resident memory (VmRSS) before it.
Target: at most 1.5 × the attachment bytes; stretch: constant (the request body
is streamed, so the encoded files are never held whole).

    python bench/attachment_memory.py [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, NameObject

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.fake_upstream import FakeUpstream, text_reply  # noqa: E402

from common import machine, write_section  # noqa: E402

SECTION = "## Memory: sending 30 MB of PDFs"
MB = 1024 * 1024
# (PDF count, bytes each): 30 MB as the issue asks (40 MB once base64-encoded, so
# the request limit is raised for this run: the real API would refuse it), and
# 23 MB, close to the most the API accepts in one request.
CASES = [(3, 10 * MB), (3, 23 * MB // 3)]


def big_pdf(size: int, seed: int) -> bytes:
    """A valid one-page PDF padded with a stream of random bytes to about `size`."""
    writer = PdfWriter()
    page = writer.add_blank_page(width=300, height=300)
    stream = DecodedStreamObject()
    stream.set_data(b"% " + os.urandom(size - 2000) + b"\n")
    page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


class Server:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Server":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "chatsite.asgi:application"],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/accounts/login/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("daphne did not start")

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=10)


def sign_up(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=True, timeout=60)
    client.get("/accounts/signup/")
    token = client.cookies["csrftoken"]
    client.post(
        "/accounts/signup/",
        data={"username": "bench", "password1": "a-long-bench-pass-1", "password2": "a-long-bench-pass-1",
              "csrfmiddlewaretoken": token},
    )
    return client


async def send(base_ws: str, cookies: str, text: str, attachments: list[str]) -> dict:
    headers = {"Cookie": cookies, "Origin": base_ws.replace("ws://", "http://")}
    async with websockets.connect(f"{base_ws}/ws/chat/new/", additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"action": "send", "text": text, "client_id": "b", "attachments": attachments}))
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if event.get("event") in ("message.end", "error"):
                return event


def run(pdf_count: int, pdf_bytes: int) -> dict:
    data_dir = tempfile.mkdtemp(prefix="chat-bench-mem-")
    with FakeUpstream() as upstream:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "ANTHROPIC_AUTH_TOKEN")}
        env.update(DATA_DIR=data_dir, ANTHROPIC_BASE_URL=upstream.url, ANTHROPIC_API_KEY="bench",
                   DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost", DJANGO_SECRET_KEY="bench-secret-" + "x" * 40,
                   CHAT_MAX_REQUEST_BYTES=str(64 * MB))
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        server = Server(env).start()
        client = sign_up(server.url)
        token = client.cookies["csrftoken"]
        ids, total = [], 0
        for n in range(pdf_count):
            pdf = big_pdf(pdf_bytes, n)
            total += len(pdf)
            answer = client.post("/attachments/", files={"file": (f"report-{n}.pdf", pdf, "application/pdf")},
                                 headers={"X-CSRFToken": token}).json()
            assert answer["ok"], answer
            ids.append(answer["attachment"]["id"])
        cookies = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        server.stop()
        server = Server(env).start()  # a fresh process: the uploads' memory does not count
        try:
            ws = server.url.replace("http://", "ws://")
            upstream.enqueue(text_reply("warm"), text_reply("Three reports, read."))
            asyncio.run(send(ws, cookies, "warm up", []))
            time.sleep(0.5)
            before = memory(server.process.pid)
            started = time.monotonic()
            end = asyncio.run(send(ws, cookies, "Summarise these reports", ids))
            elapsed = time.monotonic() - started
            after = memory(server.process.pid)
        finally:
            server.stop()
        assert end.get("status") == "complete", end
        received = upstream.requests[-1]
        return {
            "attachment_bytes": total,
            "request_bytes": len(received.raw),
            "rss_before": before["VmRSS"],
            "peak_after": after["VmHWM"],
            "growth": after["VmHWM"] - before["VmRSS"],
            "seconds": elapsed,
        }


def report(results: list[dict]) -> str:
    mb = MB
    rows = []
    for result in results:
        ratio = result["growth"] / result["attachment_bytes"]
        rows.append(
            f"| {result['attachment_bytes'] / mb:.1f} MB | {result['request_bytes'] / mb:.1f} MB "
            f"| {result['rss_before'] / mb:.1f} MB | {result['peak_after'] / mb:.1f} MB | {result['growth'] / mb:.1f} MB "
            f"| {ratio:.2f}× | {result['seconds']:.2f} s |"
        )
    worst = max(r["growth"] / r["attachment_bytes"] for r in results)
    verdict = "met" if worst <= 1.5 else "NOT met"
    table = "\n".join(rows)
    return f"""{SECTION}

`make bench` (`bench/attachment_memory.py`), {datetime.date.today().isoformat()}, on {machine()}.

One daphne process (SQLite, in-memory channel layer) sends one message carrying
three PDFs to the loopback fake upstream. Growth = peak resident memory of the
server after the send (VmHWM) − resident memory before it (VmRSS), after a
restart and one warm-up message. 30 MB of PDFs make a 40 MB request once
base64-encoded, more than the API's 32 MB: the app refuses that before sending,
so for this run the limit was raised (`CHAT_MAX_REQUEST_BYTES`) and the fake
upstream accepted it; the 23 MB row is within the real limit.

| attachments | request sent (base64 JSON) | RSS before | peak after | growth | growth ÷ attachments | time |
|---|---|---|---|---|---|---|
{table}

Target (growth ≤ 1.5 × the attachment bytes): **{verdict}** (worst {worst:.2f}×). The request body is
streamed: `conversations/upstream.py` (`encode_body`, `FileData`) writes the JSON
around each file and base64-encodes the file in 768 KB chunks as httpx sends it,
with an exact `Content-Length`: the server's memory grows by a few megabytes
(chunks and buffers), not by the files' size or a multiple of it.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    results = [run(count, size) for count, size in CASES]
    section = report(results)
    print(section)
    write_section(Path(args.out), SECTION, section)


if __name__ == "__main__":
    main()
