#!/usr/bin/env python
"""Streaming load benchmark: N conversations at once through ONE daphne process.

    python bench/load.py [--n 10,100,200,500,1000] [--out docs/benchmarks.md]
                         [--deltas 100] [--spacing 0.02] [--pg] [--profile 200]
                         [--py-spy PATH] [--app-dir DIR] [--from-results FILE]

What runs (all on loopback, every process stopped at the end, every level bounded):

* the upstream: an asyncio HTTP/1.1 server in its own process (this file with
  --serve-upstream) that answers each streaming POST /v1/messages with a
  documented Messages API stream: message_start, ping, content_block_start,
  `--deltas` text_delta events `--spacing` seconds apart, content_block_stop,
  message_delta, message_stop (a request with "stream": false, such as the
  app's title request, gets a small JSON message). Every delta's text embeds
  the wall-clock time at which the upstream wrote it (`@T<microseconds>@`), so a
  receiver on the same machine can compute each delta's latency. The text is
  ordinary markdown: paragraphs, bold, inline code and one fenced Python block.
* the app: `manage.py migrate` into a fresh DATA_DIR (SQLite; with --pg also a
  fresh PostgreSQL database and the Redis channel layer), then ONE daphne
  process. The per-user limits are raised (CHAT_MAX_CONCURRENT_GENERATIONS and
  CHAT_MESSAGES_PER_MINUTE = 100000), ANTHROPIC_BASE_URL is the upstream. By
  default daphne is started through a small wrapper (this file with --daphne)
  that only observes: it adds two timestamps to each `message.delta` (when the
  generation task received each upstream delta, and when its flush began) and
  runs a probe measuring event-loop lag and the wait for the thread-sensitive
  sync thread; --plain-daphne runs `python -m chatsite.serve` untouched (then only the
  end-to-end numbers are reported), and --plain-check N repeats one level so.
* the load client (this file with --client, its own process): signs up
  ceil(N/10) users over HTTP (so each user has about 10 conversations streaming),
  opens N websockets to /ws/chat/new/, sends one message on each at the same
  moment and reads every event; latency of a delta = websocket receive time -
  upstream write time, for every timestamp in a (coalesced) message.delta.
* the baseline: N concurrent streams read straight from the upstream by a plain
  asyncio reader (the floor; its own process), and for comparison by httpx.
* optionally py-spy on daphne during an extra run at N = --profile.

The report replaces the section "## Streaming load (one daphne process)" of
--out (other sections are kept). Logs and raw JSON results stay in a temporary
directory printed at the end; --from-results rewrites the section from them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Streaming load (one daphne process)"
MARK = re.compile(r"@T(\d{10,20})@")
MARK_B = re.compile(rb"@T(\d{10,20})@")
PASSWORD = "Tr0ub4dor&3-lighthouse-bench"


def _flush_interval_ms(app_dir: Path = ROOT) -> float:
    """settings.CHAT_FLUSH_INTERVAL, read from the source (importing settings has side effects)."""
    try:
        text = (Path(app_dir) / "chatsite" / "settings.py").read_text()
        return float(re.search(r"^CHAT_FLUSH_INTERVAL\s*=\s*([0-9.]+)", text, flags=re.M).group(1)) * 1000
    except (OSError, AttributeError, ValueError):
        return 40.0


FLUSH_INTERVAL_MS = _flush_interval_ms()
CONVERSATIONS_PER_USER = 10
LIMIT_ENV = {"CHAT_MAX_CONCURRENT_GENERATIONS": "100000", "CHAT_MESSAGES_PER_MINUTE": "100000"}


def now_us() -> int:
    return time.time_ns() // 1000


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary_ms(values_us: list[int]) -> dict:
    out = {"count": len(values_us)}
    for q in (50, 90, 99, 99.9):
        value = percentile(values_us, q)
        out[f"p{q:g}"] = None if value is None else value / 1000.0
    out["max"] = max(values_us) / 1000.0 if values_us else None
    return out


# =============================================================================
# The upstream: an asyncio SSE server speaking the Messages API stream
# =============================================================================

PHRASES = [
    "the **answer** streams ",
    "token by token, ",
    "with `inline code` ",
    "and plain words ",
    "that the page renders ",
    "as *markdown* ",
    "while it arrives; ",
    "each piece is small. ",
]


def delta_text(k: int, total: int, ts: int) -> str:
    """The k-th delta of an answer of `total` deltas, embedding the write time."""
    marker = f"@T{ts}@"
    code_start = total // 2 if total >= 30 else -1
    code_end = code_start + 8
    if 0 <= code_start <= k < code_end:
        head = "\n\n```python\n" if k == code_start else ""
        return f"{head}value_{k} = compute({k}, scale=2.5)  # {marker}\n"
    head = "```\n\n" if code_start >= 0 and k == code_end else ""
    tail = "\n\n" if k % 12 == 11 else ""
    return f"{head}{marker} {PHRASES[k % len(PHRASES)]}{tail}"


DELTAS_ASKED = re.compile(rb"deltas=(\d+)")  # in a request's text: the answer's number of deltas


def _sse(name: str, data: str) -> bytes:
    payload = f"event: {name}\ndata: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class UpstreamServer:
    def __init__(self, deltas: int, spacing: float):
        self.deltas = deltas
        self.spacing = spacing
        self.active = 0
        self.peak = 0
        self.started = 0
        self.completed = 0
        self.aborted = 0
        self.counter = 0
        self.plain = 0  # non-streaming requests answered
        self.lateness: list[float] = []  # ms between a delta's scheduled time and its write


    def stats(self, reset: bool) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out = {
            "active": self.active,
            "peak": self.peak,
            "started": self.started,
            "completed": self.completed,
            "aborted": self.aborted,
            "plain": self.plain,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "time": time.time(),
            "late_p50_ms": percentile(self.lateness, 50),
            "late_p99_ms": percentile(self.lateness, 99),
            "late_max_ms": max(self.lateness) if self.lateness else None,
        }
        if reset:
            self.peak = self.active
            self.started = self.completed = self.aborted = self.plain = 0
            self.lateness = []
        return out

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                if target.startswith("/stats"):
                    self._json(writer, 200, self.stats(reset="reset" in target))
                elif method == "POST" and target.split("?")[0] == "/v1/messages":
                    if not await self.stream(writer, body):
                        return
                else:
                    self._json(writer, 404, {"type": "error", "error": {"type": "not_found_error", "message": "Not found"}})
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _json(writer: asyncio.StreamWriter, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)
        )

    async def stream(self, writer: asyncio.StreamWriter, body: bytes) -> bool:
        try:
            request = json.loads(body)
        except ValueError:
            request = {}
        model = request.get("model") or "claude-bench"
        self.counter += 1
        if request.get("stream") is False:  # e.g. the app's title request: a plain JSON Message
            self.plain += 1
            self._json(writer, 200, {
                "id": f"msg_bench_{os.getpid()}_{self.counter}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "Benchmark conversation"}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 40, "output_tokens": 4},
            })  # fmt: skip
            return True
        asked = DELTAS_ASKED.search(body)  # the load client may ask for another answer length
        total = int(asked.group(1)) if asked else self.deltas
        message_id = f"msg_bench_{os.getpid()}_{self.counter}"
        message = {
            "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        }  # fmt: skip
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
            b"request-id: req_" + message_id.encode() + b"\r\ntransfer-encoding: chunked\r\n\r\n"
            + _sse("message_start", json.dumps({"type": "message_start", "message": message}))
            + _sse("ping", '{"type": "ping"}')
            + _sse("content_block_start", '{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}')
        )
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        start = loop.time()
        state = {"k": 0}

        def send_delta() -> None:
            if done.done():
                return
            if writer.is_closing():
                done.set_result(False)
                return
            k = state["k"]
            if len(self.lateness) < 500_000:
                self.lateness.append((loop.time() - start - (k + 1) * self.spacing) * 1000)
            text = delta_text(k, total, now_us())
            writer.write(
                _sse(
                    "content_block_delta",
                    '{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": '
                    + json.dumps(text)
                    + "}}",
                )
            )
            k += 1
            state["k"] = k
            if k < total:
                loop.call_at(start + (k + 1) * self.spacing, send_delta)
                return
            writer.write(
                _sse("content_block_stop", '{"type": "content_block_stop", "index": 0}')
                + _sse(
                    "message_delta",
                    json.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": total * 6}}),
                )  # fmt: skip
                + _sse("message_stop", '{"type": "message_stop"}')
                + b"0\r\n\r\n"
            )
            done.set_result(True)

        self.active += 1
        self.started += 1
        self.peak = max(self.peak, self.active)
        loop.call_at(start + self.spacing, send_delta)
        try:
            ok = await done
        finally:
            self.active -= 1
        if ok:
            self.completed += 1
        else:
            self.aborted += 1
        return ok


def serve_upstream(args: argparse.Namespace) -> None:
    server_state = UpstreamServer(args.deltas, args.spacing)

    async def main() -> None:
        server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0, backlog=4096, limit=1 << 20)
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        # Stop by itself if the orchestrator goes away (stdin closes) or after the deadline.
        try:
            asyncio.get_running_loop().add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))
        except (OSError, ValueError):  # stdin is not a pipe: rely on the deadline and signals
            pass
        try:
            await asyncio.wait_for(stop, timeout=args.max_lifetime)
        except asyncio.TimeoutError:
            pass
        server.close()

    asyncio.run(main())


# =============================================================================
# The load clients (app over websockets, baseline over httpx)
# =============================================================================


class Collector:
    def __init__(self, deltas: int):
        self.deltas = deltas
        self.latency: list[int] = []  # receive - upstream write, per delta (µs)
        self.pre_flush: list[int] = []  # flush start - upstream write (instrumented app)
        self.inbound: list[int] = []  # arrival in the generation task - upstream write
        self.wait: list[int] = []  # flush start - arrival (the coalescing wait)
        self.post_flush: list[int] = []  # receive - flush start
        self.beyond: list[int] = []  # latency minus the design wait (wait capped at the interval)
        self.mid: list[int] = []  # latency of deltas in the middle 60 % of each answer (no start/end bursts)
        self.first_delta: list[int] = []  # send -> first message.delta
        self.start_event: list[int] = []  # send -> message.start
        self.answer_time: list[int] = []  # send -> message.end
        self.messages = 0
        self.markers = 0
        self.errors: dict[str, int] = {}
        self.failed_answers = 0
        self.complete_answers = 0
        self.first_send = None
        self.last_end = None
        self.timeline: dict[int, list[int]] = {}  # second since the first send -> latencies

    def record(self, received: int, latency: int) -> None:
        self.latency.append(latency)
        if self.first_send:
            self.timeline.setdefault((received - self.first_send) // 1_000_000, []).append(latency)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def _client_result(col: Collector, extra: dict) -> dict:
    wall = ((col.last_end or 0) - (col.first_send or 0)) / 1e6 if col.first_send and col.last_end else None
    result = {
        "latency": summary_ms(col.latency),
        "mid": summary_ms(col.mid),
        "first_delta": summary_ms(col.first_delta),
        "start_event": summary_ms(col.start_event),
        "answer_time": summary_ms(col.answer_time),
        "messages": col.messages,
        "deltas": col.markers,
        "expected_deltas": extra.get("n", 0) * col.deltas,
        "errors": col.errors,
        "failed_answers": col.failed_answers,
        "complete_answers": col.complete_answers,
        "first_send": col.first_send / 1e6 if col.first_send else None,
        "last_end": col.last_end / 1e6 if col.last_end else None,
        "wall_s": wall,
        "deltas_per_s": col.markers / wall if wall else None,
        "answers_per_s": col.complete_answers / wall if wall else None,
        "messages_per_s": col.messages / wall if wall else None,
        "timeline": [
            {"second": sec, "count": len(vals), "p50": percentile(vals, 50) / 1000, "p99": percentile(vals, 99) / 1000}
            for sec, vals in sorted(col.timeline.items())
        ],
    }
    if col.post_flush:
        result.update(
            pre_flush=summary_ms(col.pre_flush),
            inbound=summary_ms(col.inbound),
            wait=summary_ms(col.wait),
            post_flush=summary_ms(col.post_flush),
            beyond=summary_ms(col.beyond),
        )
    result.update(extra)
    return result


def _emit(tag: str, payload: dict) -> None:
    sys.stdout.write(f"{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


async def _wait_go() -> None:
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "GO":
        raise SystemExit("orchestrator went away")


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _bounded(tasks: list, timeout: float, col: Collector) -> None:
    """Wait for every conversation, at most `timeout` s; the unfinished ones count as failed."""
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    if pending:
        col.last_end = now_us()
        col.error("level_timeout")
        col.errors["unfinished_at_timeout"] = len(pending)
        col.failed_answers += len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def run_baseline_client(args: argparse.Namespace) -> dict:
    """N concurrent streams read straight from the upstream: the floor of the setup.

    --baseline raw (the reference): asyncio streams and a hand-written HTTP/1.1
    request, the cheapest reader Python offers. --baseline httpx: httpx streaming,
    as the app's upstream client reads (it saturates a core sooner).
    """
    col = Collector(args.deltas)
    body = json.dumps(
        {"model": "claude-bench", "max_tokens": 1024, "stream": True,
         "messages": [{"role": "user", "content": f"bench deltas={args.deltas}"}]}
    ).encode()  # fmt: skip
    headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01", "content-type": "application/json"}
    host, port = args.upstream.split("//", 1)[1].rsplit(":", 1)

    def consume(state: dict, data: bytes, received: int) -> None:
        buffer = state["buffer"] + data
        cut = buffer.rfind(b"\n\n")
        if cut < 0:
            state["buffer"] = buffer
            return
        complete, state["buffer"] = buffer[: cut + 2], buffer[cut + 2 :]
        col.messages += 1
        for match in MARK_B.finditer(complete):
            latency = received - int(match.group(1))
            col.record(received, latency)
            if args.deltas // 5 <= state["got"] < args.deltas - args.deltas // 5:
                col.mid.append(latency)
            state["got"] += 1
            col.markers += 1
            if state["first"]:
                col.first_delta.append(received - state["sent"])
                state["first"] = False
        if b"event: message_stop" in complete:
            state["finished"] = True

    async def via_raw(state: dict) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            head = (
                f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                + "\r\n"
            )
            writer.write(head.encode() + body)
            status = int((await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1])
            if status != 200:
                col.error(f"http_{status}")
                return
            while not state["finished"]:
                data = await reader.read(65536)
                if not data:
                    break
                consume(state, data, now_us())
        finally:
            writer.close()

    async def via_httpx(client, state: dict) -> None:
        async with client.stream("POST", args.upstream + "/v1/messages", content=body, headers=headers) as response:
            if response.status_code != 200:
                col.error(f"http_{response.status_code}")
                return
            async for chunk in response.aiter_raw():
                consume(state, chunk, now_us())

    async def one(client, i: int) -> None:
        await asyncio.sleep(args.stagger * i / args.n)
        state = {"buffer": b"", "got": 0, "first": True, "finished": False, "sent": now_us()}
        col.first_send = min(col.first_send or state["sent"], state["sent"])
        try:
            if client is None:
                await via_raw(state)
            else:
                await via_httpx(client, state)
        except Exception as exc:  # refused, reset, timed out
            col.error(exc.__class__.__name__)
        end = now_us()
        if state["finished"] and state["got"] == args.deltas:
            col.complete_answers += 1
            col.answer_time.append(end - state["sent"])
            col.last_end = max(col.last_end or end, end)
        else:
            col.failed_answers += 1
            if not state["finished"]:
                col.error("stream_incomplete")
            if state["got"] != args.deltas:
                col.error("missing_deltas")

    async def run_all(client) -> float:
        _emit("READY", {"users": 0})
        await _wait_go()
        cpu0 = _cpu_self()
        await _bounded([asyncio.ensure_future(one(client, i)) for i in range(args.n)], args.timeout, col)
        return _cpu_self() - cpu0

    if args.baseline == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(connect=30.0, read=60.0, write=30.0, pool=60.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
            cpu = await run_all(client)
    else:
        cpu = await run_all(None)
    return _client_result(col, {"mode": f"baseline-{args.baseline}", "n": args.n, "client_cpu_s": cpu})


async def _signup(base: str, index: int, tag: str) -> str:
    import httpx

    username = f"bench{tag}u{index}"
    async with httpx.AsyncClient(base_url=base, timeout=120.0, trust_env=False) as client:
        page = await client.get("/accounts/signup/")
        page.raise_for_status()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = await client.post(
            "/accounts/signup/",
            data={"username": username, "password1": PASSWORD, "password2": PASSWORD, "csrfmiddlewaretoken": token},
        )
        if response.status_code != 302 or "sessionid" not in client.cookies:
            raise RuntimeError(f"sign-up of {username} failed: HTTP {response.status_code}")
        return client.cookies["sessionid"]


async def run_app_client(args: argparse.Namespace) -> dict:
    from websockets.asyncio.client import connect

    col = Collector(args.deltas)
    base = args.url
    users = max(1, math.ceil(args.n / CONVERSATIONS_PER_USER))
    tag = f"{os.getpid()}x{int(time.time()) % 100000}"
    t0 = time.time()
    gate = asyncio.Semaphore(4)

    async def signup(i: int) -> str:
        async with gate:
            return await _signup(base, i, tag)

    sessions = await asyncio.wait_for(asyncio.gather(*(signup(i) for i in range(users))), timeout=args.signup_timeout)
    signup_s = time.time() - t0

    ws_url = base.replace("http://", "ws://") + "/ws/chat/new/"
    origin = base
    opening = asyncio.Semaphore(50)
    sockets: list = [None] * args.n
    t1 = time.time()

    async def open_socket(i: int) -> None:
        async with opening:
            try:
                sockets[i] = await connect(
                    ws_url,
                    origin=origin,
                    additional_headers={"Cookie": f"sessionid={sessions[i % users]}"},
                    proxy=None,
                    ping_interval=None,
                    max_size=None,
                    max_queue=None,
                    open_timeout=60,
                    close_timeout=5,
                )
            except Exception as exc:  # refused, timed out, rejected handshake
                col.error(f"connect_{exc.__class__.__name__}")

    await asyncio.gather(*(open_socket(i) for i in range(args.n)))
    connect_s = time.time() - t1
    open_count = sum(1 for ws in sockets if ws is not None)
    _emit("READY", {"users": users, "signup_s": signup_s, "connect_s": connect_s, "open": open_count})
    await _wait_go()
    cpu0 = _cpu_self()
    interval_us = int(args.flush_interval * 1e6)

    async def converse(i: int, ws) -> None:
        await asyncio.sleep(args.stagger * i / args.n)
        sent = now_us()
        col.first_send = min(col.first_send or sent, sent)
        got = 0
        first = True
        status = None
        try:
            text = f"Benchmark message {i} (deltas={args.deltas})"
            await ws.send(json.dumps({"action": "send", "text": text, "client_id": f"c{i}"}))
            async for raw in ws:
                received = now_us()
                event = json.loads(raw)
                kind = event.get("event")
                col.messages += 1
                if kind == "message.delta":
                    bench = event.get("bench")
                    arrivals = bench.get("arrivals", []) if bench else []
                    flush = bench.get("flush", 0) if bench else 0
                    j = 0
                    for part in event.get("parts", []):
                        for match in MARK.finditer(part.get("text") or ""):
                            written = int(match.group(1))
                            latency = received - written
                            col.record(received, latency)
                            if flush and j < len(arrivals):
                                arrival = arrivals[j]
                                wait = flush - arrival
                                col.pre_flush.append(flush - written)
                                col.inbound.append(arrival - written)
                                col.wait.append(wait)
                                col.post_flush.append(received - flush)
                                col.beyond.append(latency - min(max(wait, 0), interval_us))
                            if args.deltas // 5 <= got < args.deltas - args.deltas // 5:
                                col.mid.append(latency)
                            j += 1
                            got += 1
                            col.markers += 1
                            if first:
                                col.first_delta.append(received - sent)
                                first = False
                elif kind == "message.start":
                    col.start_event.append(received - sent)
                elif kind == "message.end":
                    status = event.get("status")
                    end = now_us()
                    col.answer_time.append(end - sent)
                    col.last_end = max(col.last_end or end, end)
                    break
                elif kind == "error":
                    col.error("error_event")
                    break
        except Exception as exc:  # the socket closed under us
            col.error(f"socket_{exc.__class__.__name__}")
        if status == "complete" and got == args.deltas:
            col.complete_answers += 1
        else:
            col.failed_answers += 1
            if status is None:
                col.error("no_message_end")
            elif status != "complete":
                col.error(f"end_status_{status}")
            if got != args.deltas:
                col.error("missing_deltas")

    tasks = [asyncio.ensure_future(converse(i, ws)) for i, ws in enumerate(sockets) if ws is not None]
    for _ in range(args.n - len(tasks)):
        col.failed_answers += 1
    await _bounded(tasks, args.timeout, col)
    cpu = _cpu_self() - cpu0
    await asyncio.gather(*(ws.close() for ws in sockets if ws is not None), return_exceptions=True)
    return _client_result(
        col,
        {"mode": "app", "n": args.n, "users": users, "signup_s": signup_s, "connect_s": connect_s,
         "open_sockets": open_count, "client_cpu_s": cpu},
    )  # fmt: skip


def run_client(args: argparse.Namespace) -> None:
    runner = run_app_client if args.client == "app" else run_baseline_client
    result = asyncio.run(runner(args))
    _emit("RESULT", result)


# =============================================================================
# daphne, instrumented: two timestamps on each message.delta
# =============================================================================


def run_daphne_instrumented(argv: list[str]) -> None:
    """Start daphne in this process after adding benchmark timestamps to deltas.

    Only observation is added: when the generation task got each text delta
    from the upstream, and when the flush that published it began. Nothing
    else about the app changes.
    """
    sys.path.insert(0, os.getcwd())  # the app directory (the orchestrator starts us there)
    try:  # the app's entry point (`make run`): daphne on uvloop
        from chatsite.serve import use_uvloop
    except ImportError:  # an older app: plain daphne
        pass
    else:
        use_uvloop()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from conversations import generation

    cls = generation.Generation
    original_on_event, original_flush, original_next = cls.on_event, cls.flush, cls._next

    def on_event(self, event):
        if event.get("type") == "content_block_delta":
            self.__dict__.setdefault("_bench_arrivals", []).append(now_us())
        return original_on_event(self, event)

    async def flush(self, *args, **kwargs):
        self._bench_flush = now_us()
        return await original_flush(self, *args, **kwargs)

    def _next(self, event, **data):
        if event == "message.delta":
            data["bench"] = {"flush": getattr(self, "_bench_flush", 0), "arrivals": self.__dict__.pop("_bench_arrivals", [])}
        return original_next(self, event, **data)

    cls.on_event, cls.flush, cls._next = on_event, flush, _next
    _install_probe(os.environ.get("BENCH_PROBE_FILE", ""))
    _install_task_dump()
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(argv)


def _install_task_dump() -> None:
    """On SIGUSR1 (sent before daphne is stopped), write the stack of every
    generation task still running to stderr (daphne.log): an answer that never
    ended shows where it waits."""

    def dump() -> None:
        tasks = [t for t in asyncio.all_tasks() if "Generation" in getattr(t.get_coro(), "__qualname__", "")]
        print(f"--- {len(tasks)} generation task(s) still running", file=sys.stderr)
        for task in tasks[:20]:
            task.print_stack(limit=30, file=sys.stderr)
        sys.stderr.flush()

    def on_signal(*_args) -> None:
        try:
            asyncio.get_running_loop().call_soon_threadsafe(dump)
        except Exception as exc:  # no loop yet
            print(f"task dump failed: {exc!r}", file=sys.stderr)

    signal.signal(signal.SIGUSR1, on_signal)


def _install_probe(path: str) -> None:
    """Every 100 ms: how late the event loop wakes up, and how long a no-op takes to
    go through the single thread that runs channels' database_sync_to_async calls
    and the close_old_connections() that channels runs before dispatching every
    consumer event (asgiref's thread-sensitive executor). Written to `path`."""
    if not path:
        return
    from asgiref.sync import sync_to_async

    from conversations import consumers

    original = consumers.ensure_sweeper
    state: dict = {"task": None, "rows": []}
    noop = sync_to_async(lambda: None)  # thread_sensitive=True, like DatabaseSyncToAsync

    async def probe() -> None:
        last_write = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            woke = time.monotonic()
            await noop()
            done = time.monotonic()
            state["rows"].append((time.time(), (woke - before - 0.1) * 1000, (done - woke) * 1000))
            if done - last_write > 0.5:
                last_write = done
                Path(path).write_text(json.dumps(state["rows"]))

    def ensure_sweeper() -> None:
        original()
        if state["task"] is None:
            state["task"] = asyncio.get_running_loop().create_task(probe())

    consumers.ensure_sweeper = ensure_sweeper


# =============================================================================
# The orchestrator
# =============================================================================


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_facts(app_dir: Path) -> dict:
    """What the report may say about the code measured (statements that depend on it)."""
    def read(name: str) -> str:
        try:
            return (Path(app_dir) / name).read_text()
        except OSError:
            return ""

    consumers, generation, settings_py = read("conversations/consumers.py"), read("conversations/generation.py"), read("chatsite/settings.py")
    return {
        # channels' AsyncConsumer.dispatch runs close_old_connections() on the sync thread
        # before every handler unless the consumer relays chat.event itself
        "relay_hops_to_db_thread": "async def dispatch" not in consumers,
        "ticker_stopped_by_cancel": "gather(ticker" in generation,
        "redis_socket_timeout_set": "socket_timeout" in settings_py,
        "conn_max_age_0": "conn_max_age=0" in settings_py and 'CONN_MAX_AGE"] = None' not in settings_py,
        # publish when the text arrives (at most once per interval) rather than on a fixed tick
        "leading_edge_flush": "async def _flusher" in generation,
        "tick_awaits_save": "await self._save()" in generation,
    }


def describe_app(app_dir: Path) -> str:
    """Which code was measured: the commit, and whether the working tree had other changes."""
    def git(*words: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(app_dir), *words], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"the code in `{app_dir}`"
    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if not line[3:].startswith(("bench/", "docs/benchmarks.md"))]  # fmt: skip
    if not changed:
        return f"commit `{commit}`"
    return f"commit `{commit}` plus uncommitted changes to {len(changed)} file(s) ({', '.join(changed[:6])})"


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": mem_gib,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


class ProcSampler(threading.Thread):
    """Samples a process's RSS, peak RSS (VmHWM) and CPU time every 0.1 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float, float, float]] = []  # time, rss MiB, hwm MiB, cpu s
        self.stop_event = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> tuple[float, float, float, float] | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = {}
        for line in status.splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                fields[line.split(":")[0]] = int(line.split()[1]) / 1024
        parts = stat.rsplit(")", 1)[1].split()
        cpu = (int(parts[11]) + int(parts[12])) / self.tick
        return time.time(), fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0), cpu

    def run(self) -> None:
        while not self.stop_event.is_set():
            sample = self.sample()
            if sample:
                self.samples.append(sample)
            self.stop_event.wait(0.1)

    def cpu_between(self, start: float, end: float) -> float | None:
        """Average CPU use (1.0 = one core) between two wall-clock times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        return (inside[-1][3] - inside[0][3]) / (inside[-1][0] - inside[0][0])

    def rss_at(self, when: float) -> float | None:
        before = [s for s in self.samples if s[0] <= when]
        return before[-1][1] if before else None

    def peak(self) -> float:
        return max((max(s[1], s[2]) for s in self.samples), default=0.0)


class LineReader(threading.Thread):
    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: queue.Queue = queue.Queue()

    def run(self) -> None:
        for line in iter(self.stream.readline, ""):
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, tag: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {tag} within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"the process ended before {tag}")
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (/proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float, threshold: float = 0.3, window: float = 2.0) -> float:
    """Wait (at most `limit` s) until other processes use less than `threshold` cores."""
    deadline = time.monotonic() + limit
    while True:
        before, t0 = machine_busy_s(), time.monotonic()
        time.sleep(window)
        busy = (machine_busy_s() - before) / (time.monotonic() - t0)
        if busy < threshold or time.monotonic() > deadline:
            return busy


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is None:
        if "--daphne" in (process.args or []):
            process.send_signal(signal.SIGUSR1)  # stacks of answers still running (_install_task_dump)
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.app_dir = Path(args.app_dir).resolve()
        self.workdir = Path(tempfile.mkdtemp(prefix="chat-bench-"))
        self.upstream: subprocess.Popen | None = None
        self.upstream_url = ""
        self.results: dict = {"sqlite": {}, "postgres": {}, "baseline": {}, "baseline_httpx": {}, "plain_check": {},
                              "profile": None}

    # --- the upstream ----------------------------------------------------

    def start_upstream(self) -> None:
        log = open(self.workdir / "upstream.log", "wb")
        self.upstream = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-upstream",
             "--deltas", str(self.args.deltas), "--spacing", str(self.args.spacing)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
        )  # fmt: skip
        line = self.upstream.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the upstream did not start: {line!r}")
        self.upstream_url = f"http://127.0.0.1:{int(line.split()[1])}"

    def upstream_stats(self, reset: bool = False) -> dict:
        import httpx

        return httpx.get(self.upstream_url + ("/stats?reset=1" if reset else "/stats"), timeout=10, trust_env=False).json()

    # --- one client run ----------------------------------------------------

    def run_client(self, mode: str, n: int, url: str, on_ready=None, sampler: ProcSampler | None = None,
                   baseline: str = "raw", sustained: bool = False) -> dict:
        deltas, stagger = (self.args.sustained_deltas, self.args.stagger) if sustained else (self.args.deltas, 0.0)
        command = [sys.executable, str(Path(__file__).resolve()), "--client", mode, "--n", str(n), "--baseline", baseline,
                   "--deltas", str(deltas), "--stagger", str(stagger), "--timeout", str(self.args.level_timeout),
                   "--flush-interval", str(FLUSH_INTERVAL_MS / 1000)]  # fmt: skip
        command += ["--url", url] if mode == "app" else ["--upstream", url]
        log = open(self.workdir / f"client-{mode}-{baseline if mode == 'baseline' else ''}-{n}{'-sustained' if sustained else ''}.log", "w")
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        reader = LineReader(process.stdout)
        reader.start()
        try:
            ready = reader.expect("READY", self.args.signup_timeout + 120)
            extra = {"quiet_busy_cores": wait_quiet(self.args.quiet_wait) if self.args.quiet_wait else None}
            up0 = self.upstream_stats(reset=True)
            extra["rss_before_mib"] = sampler.sample()[1] if sampler else None
            busy0, t0 = machine_busy_s(), time.time()
            if on_ready:
                on_ready()
            process.stdin.write("GO\n")
            process.stdin.flush()
            result = reader.expect("RESULT", self.args.level_timeout + 60)
            extra["machine_busy_cores"] = (machine_busy_s() - busy0) / max(time.time() - t0, 1e-6)
            extra["go_s"] = time.time() - t0
            extra["go_start"] = t0
            result.update(ready=ready, **extra)
            up = self.upstream_stats()
            result["upstream_peak_streams"] = up["peak"]
            result["upstream_aborted"] = up["aborted"]
            result["upstream_plain_requests"] = up.get("plain")
            result["upstream_cpu"] = (up["cpu_s"] - up0["cpu_s"]) / max(up["time"] - up0["time"], 1e-6)
            result["upstream_late"] = {k: up[k] for k in ("late_p50_ms", "late_p99_ms", "late_max_ms")}
            mine = result["upstream_cpu"] + result.get("client_cpu_s", 0) / max(result["go_s"], 1e-6)
            if sampler:
                mine += sampler.cpu_between(t0, time.time()) or 0.0
            result["other_cores"] = max(0.0, result["machine_busy_cores"] - mine)
            return result
        except (TimeoutError, RuntimeError) as exc:
            return {"mode": mode, "n": n, "fatal": str(exc), "log": str(log.name)}
        finally:
            stop_process(process, grace=5)
            log.close()

    # --- the app -----------------------------------------------------------

    def app_env(self, data_dir: Path, database_url: str | None) -> dict:
        env = dict(os.environ)
        for key in ("DATABASE_URL", "REDIS_URL", "ANTHROPIC_AUTH_TOKEN", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env.pop(key, None)
        env.update(
            DATA_DIR=str(data_dir),
            ANTHROPIC_BASE_URL=self.upstream_url,
            ANTHROPIC_API_KEY="bench",
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DJANGO_DEBUG="false",
            DJANGO_SETTINGS_MODULE="chatsite.settings",
            PYTHONUNBUFFERED="1",
            BENCH_PROBE_FILE=str(data_dir / "probe.json"),
            NO_PROXY="127.0.0.1,localhost",
            **LIMIT_ENV,
        )
        if database_url:
            env["DATABASE_URL"] = database_url
            env["REDIS_URL"] = self.redis_url_for_app()
        return env

    def run_app_level(self, n: int, backend: str, profile: bool = False, plain: bool = False,
                      sustained: bool = False) -> dict:
        data_dir = self.workdir / (f"data-{backend}-{n}{'-profile' if profile else ''}{'-plain' if plain else ''}"
                                   f"{'-sustained' if sustained else ''}")  # fmt: skip
        data_dir.mkdir()
        database_url = None
        db_name = None
        if backend == "postgres":
            db_name = f"chat_bench_{os.getpid()}_{n}{'_p' if profile else ''}"
            database_url = self._create_pg_database(db_name)
            self.reset_redis()
        env = self.app_env(data_dir, database_url)
        try:
            migrate = subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput"],
                cwd=self.app_dir, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if migrate.returncode != 0:
                return {"fatal": f"migrate failed: {migrate.stderr[-2000:]}"}
            port = free_port()
            daphne_args = ["-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"]
            if self.args.plain_daphne or plain:
                entry = "chatsite.serve" if (self.app_dir / "chatsite" / "serve.py").exists() else "daphne"
                command = [sys.executable, "-m", entry, *daphne_args]
            else:
                command = [sys.executable, str(Path(__file__).resolve()), "--daphne", *daphne_args]
            log_path = data_dir / "daphne.log"
            with open(log_path, "wb") as log:
                daphne = subprocess.Popen(command, cwd=self.app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}"
                self._wait_http(url, daphne)
                sampler = ProcSampler(daphne.pid)
                sampler.start()
                spy = {}

                def on_ready() -> None:
                    if profile:
                        spy["process"] = self._start_profiler(daphne.pid, data_dir)

                result = self.run_client("app", n, url, on_ready=on_ready, sampler=sampler, sustained=sustained)
                time.sleep(0.3)
                sampler.stop_event.set()
                sampler.join()
                if spy.get("process"):
                    self.results["profile"] = self._finish_profiler(spy["process"], data_dir, n)
                if "fatal" not in result:
                    window = (result.get("first_send") or 0, result.get("last_end") or time.time())
                    result["daphne_cpu"] = sampler.cpu_between(*window)
                    result["peak_rss_mib"] = sampler.peak()
                    result["rss_start_mib"] = sampler.samples[0][1] if sampler.samples else None
                    result["probe"] = summarise_probe(data_dir / "probe.json", *window)
                result["daphne_exit"] = daphne.poll()
                result["daphne_log_tail"] = _tail(log_path, 15)
                return result
            finally:
                stop_process(daphne)
        finally:
            if db_name:
                self._drop_pg_database(db_name)
            for leftover in ("chat.sqlite3", "chat.sqlite3-wal", "chat.sqlite3-shm"):
                try:
                    (data_dir / leftover).unlink()
                except OSError:
                    pass

    @staticmethod
    def _wait_http(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"daphne exited with {process.returncode}")
            try:
                httpx.get(url + "/accounts/login/", timeout=2, trust_env=False)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"daphne did not answer within {timeout:.0f} s") from None
                time.sleep(0.1)

    def redis_url_for_app(self) -> str:
        """REDIS_URL for daphne: with a socket timeout above channels_redis's 5 s blocking
        pop unless --redis-stock (see check_redis_idle_receive)."""
        url = self.args.redis_url
        if self.args.redis_stock or "socket_timeout" in url:
            return url
        return url + ("&" if "?" in url else "?") + "socket_timeout=30"

    def reset_redis(self) -> None:
        """Forget channel-layer keys a previous level left behind (a fresh database restarts ids)."""
        import redis

        client = redis.Redis.from_url(self.args.redis_url)
        try:
            keys = list(client.scan_iter(match="asgi*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def _create_pg_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.args.pg_admin_url.rsplit("/", 1)[0] + "/" + name

    def _drop_pg_database(self, name: str) -> None:
        import psycopg

        try:
            with psycopg.connect(self.args.pg_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:  # reported, not fatal
            print(f"  could not drop database {name}: {exc}", file=sys.stderr)

    # --- profiling -----------------------------------------------------------

    def _start_profiler(self, pid: int, data_dir: Path) -> subprocess.Popen | None:
        spy = self.args.py_spy or shutil.which("py-spy")
        if not spy:
            return None
        duration = 30  # the streaming phase at N = 200 lasts longer than one answer
        return subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--threads",
             "--format", "raw", "--duration", str(duration), "--output", str(data_dir / "profile.txt")],
            stdout=subprocess.DEVNULL, stderr=open(data_dir / "py-spy.log", "wb"),
        )  # fmt: skip

    def _finish_profiler(self, process: subprocess.Popen, data_dir: Path, n: int) -> dict | None:
        try:
            process.wait(timeout=self.args.deltas * self.args.spacing + 60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)
        path = data_dir / "profile.txt"
        if not path.exists():
            return {"error": _tail(data_dir / "py-spy.log", 5)}
        return {"n": n, "path": str(path), **analyse_profile(path.read_text())}

    # --- the whole run -------------------------------------------------------

    def save(self) -> None:
        self.results["args"] = {k: getattr(self.args, k)
                                for k in ("levels", "deltas", "spacing", "level_timeout", "pg", "plain_daphne", "redis_stock",
                                          "sustained_levels", "sustained_deltas", "stagger")}
        self.results["machine"] = machine_info()
        self.results["app"] = self.args.app_note or describe_app(self.app_dir)
        self.results["app_facts"] = app_facts(self.app_dir)
        self.results["date"] = datetime.date.today().isoformat()
        (self.workdir / "results.json").write_text(json.dumps(self.results, indent=1, default=str))

    def run(self) -> None:
        levels = self.args.levels
        wait_quiet(self.args.quiet_wait)
        self.results["sqlite_micro"] = sqlite_micro(self.workdir)
        self.start_upstream()
        print(f"upstream at {self.upstream_url}; work dir {self.workdir}", file=sys.stderr)
        try:
            for n in levels:
                print(f"[N={n}] baseline (asyncio reader straight to the upstream)...", file=sys.stderr)
                self.results["baseline"][n] = self.run_client("baseline", n, self.upstream_url)
                print(f"  {_brief(self.results['baseline'][n])}", file=sys.stderr)
                print(f"[N={n}] baseline (httpx straight to the upstream)...", file=sys.stderr)
                self.results["baseline_httpx"][n] = self.run_client("baseline", n, self.upstream_url, baseline="httpx")
                print(f"  {_brief(self.results['baseline_httpx'][n])}", file=sys.stderr)
                if self.args.skip_sqlite:
                    continue
                print(f"[N={n}] app (SQLite, in-memory channel layer)...", file=sys.stderr)
                self.results["sqlite"][n] = self.run_app_level(n, "sqlite")
                print(f"  {_brief(self.results['sqlite'][n])}", file=sys.stderr)
                self.save()
            for n in self.args.sustained_levels if not self.args.skip_sqlite else []:
                print(f"[N={n}] sustained: baseline, then app (SQLite), {self.args.sustained_deltas} deltas per answer, "
                      f"sends spread over {self.args.stagger:g} s...", file=sys.stderr)  # fmt: skip
                level = self.results.setdefault("sustained", {})[n] = {}
                level["baseline"] = self.run_client("baseline", n, self.upstream_url, sustained=True)
                level["app"] = self.run_app_level(n, "sqlite", sustained=True)
                print(f"  baseline {_brief(level['baseline'])}\n  app {_brief(level['app'])}", file=sys.stderr)
                self.save()
            if self.args.pg:
                self.results["redis_check"] = check_redis_idle_receive(self.args.redis_url)
                print(f"  Redis idle-receive check: {self.results['redis_check']}", file=sys.stderr)
                for n in levels:
                    print(f"[N={n}] app (PostgreSQL + Redis)...", file=sys.stderr)
                    self.results["postgres"][n] = self.run_app_level(n, "postgres")
                    print(f"  {_brief(self.results['postgres'][n])}", file=sys.stderr)
                    self.save()
                self.reset_redis()
            if self.args.plain_check:
                n = self.args.plain_check
                print(f"[N={n}] app on plain `python -m chatsite.serve` (checks that the timestamps change nothing)...", file=sys.stderr)
                self.results["plain_check"] = {n: self.run_app_level(n, "sqlite", plain=True)}
                print(f"  {_brief(self.results['plain_check'][n])}", file=sys.stderr)
            if self.args.profile:
                print(f"[N={self.args.profile}] app under py-spy (a separate run, not in the tables)...", file=sys.stderr)
                self.run_app_level(self.args.profile, "sqlite", profile=True)
        finally:
            if self.upstream:
                stop_process(self.upstream, grace=5)
        if self.args.before_results:
            self.results["before"] = json.loads(Path(self.args.before_results).read_text())
        self.save()
        report = render_report(self.results, self.args, self.results["machine"])
        write_section(Path(self.args.out), report)
        print(f"wrote {self.args.out}; raw results and logs in {self.workdir}", file=sys.stderr)


def sqlite_micro(directory: Path, rounds: int = 40) -> dict:
    """One small write to SQLite as the app does it (open, WAL pragmas, write, close)
    against the same write on a connection kept open, on the disk under DATA_DIR."""
    import sqlite3

    path = directory / "micro.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.commit()
    conn.close()

    def fresh() -> None:
        c = sqlite3.connect(path)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO t VALUES ('x')")
        c.commit()
        c.close()

    def persistent() -> None:
        kept.execute("BEGIN IMMEDIATE")
        kept.execute("INSERT INTO t VALUES ('x')")
        kept.execute("COMMIT")

    out = {}
    start = time.perf_counter()
    for _ in range(rounds):
        fresh()
    out["open_write_close_ms"] = (time.perf_counter() - start) / rounds * 1000
    kept = sqlite3.connect(path, isolation_level=None)
    kept.execute("PRAGMA synchronous=NORMAL")
    start = time.perf_counter()
    for _ in range(rounds):
        persistent()
    out["persistent_write_ms"] = (time.perf_counter() - start) / rounds * 1000
    kept.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            Path(str(path) + suffix).unlink()
        except OSError:
            pass
    return out


def check_redis_idle_receive(url: str, wait: float = 8.0, trials: int = 100) -> dict:
    """Two checks of channels_redis with the app's REDIS_URL as given, without the app:
    does a receive survive a quiet spell longer than the 5 s blocking pop, and does a
    task cancelled during group_send stop (or carry on as if nothing happened)?"""
    import importlib.metadata
    import random

    from channels_redis.core import RedisChannelLayer

    async def probe() -> dict:
        layer = RedisChannelLayer(hosts=[url])
        channel = await layer.new_channel()
        start = time.monotonic()
        outcome = f"no error in {wait:.0f} s"
        try:
            await asyncio.wait_for(layer.receive(channel), wait)
        except asyncio.TimeoutError:
            pass
        except Exception as exc:  # what a consumer would die of
            outcome = f"{exc.__class__.__module__}.{exc.__class__.__name__}: {exc} after {time.monotonic() - start:.2f} s"
        group = f"bench-cancel-{os.getpid()}"
        await layer.group_add(group, channel)

        async def publisher() -> str:
            me = asyncio.current_task()
            while True:
                await layer.group_send(group, {"type": "bench.ping"})
                if me.cancelling():
                    return "carried on"

        swallowed = 0
        for _ in range(trials):
            task = asyncio.create_task(publisher())
            await asyncio.sleep(random.random() * 0.01)
            task.cancel()
            if (await asyncio.gather(task, return_exceptions=True))[0] == "carried on":
                swallowed += 1
        await layer.group_discard(group, channel)
        await layer.flush()
        await layer.close_pools()
        return {"url": url, "outcome": outcome, "cancel_swallowed": swallowed, "cancel_trials": trials,
                "redis_py": importlib.metadata.version("redis"),
                "channels_redis": importlib.metadata.version("channels_redis")}  # fmt: skip

    try:
        return asyncio.run(probe())
    except Exception as exc:
        return {"url": url, "outcome": f"check failed: {exc!r}"}


def summarise_probe(path: Path, start: float, end: float) -> dict | None:
    try:
        rows = [r for r in json.loads(path.read_text()) if start <= r[0] <= end + 1]
    except (OSError, ValueError):
        return None
    if not rows:
        return None
    lags, hops = [r[1] for r in rows], [r[2] for r in rows]
    return {
        "samples": len(rows),
        "loop_lag_p50": percentile(lags, 50), "loop_lag_p99": percentile(lags, 99), "loop_lag_max": max(lags),
        "sync_hop_p50": percentile(hops, 50), "sync_hop_p99": percentile(hops, 99), "sync_hop_max": max(hops),
    }  # fmt: skip


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _brief(result: dict) -> str:
    if "fatal" in result:
        return f"FAILED: {result['fatal']}"
    lat = result["latency"]
    return (
        f"p50 {_fmt(lat['p50'])} ms, p99 {_fmt(lat['p99'])} ms, deltas {result['deltas']}/{result['expected_deltas']}, "
        f"failed answers {result['failed_answers']} {result['errors'] or ''}, "
        f"{_fmt(result.get('deltas_per_s'), 0)} deltas/s, peak streams {result.get('upstream_peak_streams')}"
        + (f", daphne CPU {_fmt((result.get('daphne_cpu') or 0) * 100, 0)} %, peak RSS {_fmt(result.get('peak_rss_mib'), 0)} MiB"
           if result.get("mode") == "app" else "")
    )  # fmt: skip


# =============================================================================
# Profile analysis (py-spy raw / collapsed stacks)
# =============================================================================

PROFILE_BUCKETS = [  # (label, substring of a frame), first match from the leaf up wins
    ("markdown rendering (markdown-it)", "markdown_it/"),
    ("HTML sanitizing (nh3)", "nh3"),
    ("syntax highlighting (Pygments)", "pygments/"),
    ("SQLite", "sqlite3"),
    ("PostgreSQL (psycopg)", "psycopg"),
    ("Django ORM / DB layer", "django/db/"),
    ("asgiref sync/async bridge", "asgiref/"),
    ("channel layer", "channels/layers"),
    ("channels_redis", "channels_redis/"),
    ("websocket framing (autobahn)", "autobahn/"),
    ("JSON encode/decode", "json/"),
    ("upstream HTTP (httpx/httpcore)", "httpcore/"),
    ("upstream HTTP (httpx/httpcore)", "httpx/"),
    ("SSE parsing (httpx-sse)", "httpx_sse/"),
    ("app: upstream accumulator", "conversations/upstream.py"),
    ("app: generation", "conversations/generation.py"),
    ("app: consumers", "conversations/consumers.py"),
    ("channels consumer machinery", "channels/"),
    ("daphne", "daphne/"),
    ("Twisted reactor / TCP", "twisted/"),
    ("asyncio event loop", "asyncio/"),
]


IDLE_LEAVES = ("selectors.py", "threading.py", "concurrent/futures/thread.py")  # a leaf here is a wait


def analyse_profile(text: str) -> dict:
    """Shares of the busy samples (a thread waiting in select() or for work is idle):
    per library bucket, per function inclusive, per function self time, per thread."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    buckets: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = idle = 0
    for line in text.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        code_frames = [f for f in frames if "(" in f and not f.startswith(("thread ", "process "))]
        if not code_frames:
            continue
        leaf = _short(code_frames[-1])
        function = leaf.split(" (")[0].rsplit(".", 1)[-1]
        if any(function + " (" + where in leaf for where in IDLE_LEAVES):
            idle += count
            continue
        total += count
        thread = next((f for f in frames if f.startswith("thread ")), "?")
        thread = re.sub(r"^thread \(\d+\): ", "", thread)
        threads[thread] = threads.get(thread, 0) + count
        self_time[leaf] = self_time.get(leaf, 0) + count
        for name in {_short(f) for f in code_frames}:
            inclusive[name] = inclusive.get(name, 0) + count
        label = "other"
        for frame in reversed(code_frames):
            hit = next((lab for lab, needle in PROFILE_BUCKETS if needle in frame), None)
            if hit:
                label = hit
                break
        buckets[label] = buckets.get(label, 0) + count

    def top(table: dict[str, int], k: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / total) for name, c in sorted(table.items(), key=lambda kv: -kv[1])[:k]] if total else []

    return {
        "samples": total,
        "idle_samples": idle,
        "threads": top(threads, 6),
        "self": top(self_time, 15),
        "inclusive": top({k: v for k, v in inclusive.items() if not _boring(k)}, 20),
        "buckets": top(buckets, 16),
    }


def _short(frame: str) -> str:
    """'flush (conversations/generation.py:123)' -> 'flush (conversations/generation.py)'."""
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    name, path = match.groups()
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def _boring(name: str) -> bool:
    """Frames every sample of a thread passes through: entry points and bridges."""
    return any(word in name for word in (
        "run_forever", "_run_once", "Handle._run", "<module>", "main (", "entrypoint", "_bootstrap", "Thread.run",
        "run_daphne_instrumented", "_worker (concurrent", "_WorkItem.run (concurrent", "SyncToAsync.__call__.<locals>.func", "run_child",
        "SyncToAsync.thread_handler (asgiref", "Server.run (daphne", "CommandLineInterface.run", "AsyncioSelectorReactor.run",
        "context.run", "Context.run",
    ))  # fmt: skip


# =============================================================================
# The report
# =============================================================================


def _commit_of(note: str | None) -> str:
    match = re.search(r"commit `([0-9a-f]+)`", note or "")
    return f"commit `{match.group(1)}`" if match else (note or "an earlier run")


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _diff(a, b):
    return None if a is None or b is None else a - b


def render_report(results: dict, args: argparse.Namespace, machine: dict) -> str:
    flush_ms = FLUSH_INTERVAL_MS
    answer_kb = len("".join(delta_text(k, args.deltas, 10**15) for k in range(args.deltas)).encode()) / 1000
    instrumented = not getattr(args, "plain_daphne", False)
    lines = [SECTION, ""]
    lines += [
        f"Generated by `make bench` (`python bench/load.py`) on {results.get('date') or datetime.date.today().isoformat()}. "
        f"App measured: {results.get('app') or 'this checkout'}.",
        "",
        f"**Machine:** {machine['cpu']}, {machine['cores']} cores, {_fmt(machine['ram_gib'], 0)} GiB RAM, "
        f"Python {machine['python']}, {machine['os']}. The fake upstream, the load client and daphne all run on "
        f"this machine and share its {machine['cores']} cores (each in its own process).",
        "",
        f"**Load:** N conversations answered at once by **one daphne process**. Each answer is "
        f"{args.deltas} `text_delta` events written {args.spacing * 1000:.0f} ms apart by an asyncio fake upstream "
        f"({args.deltas * args.spacing:.1f} s of streaming, {answer_kb:.1f} kB of markdown: paragraphs, bold, "
        "inline code and one fenced Python block); a non-streaming request (the app's title request after a "
        "first answer) gets a small JSON message. "
        f"The N conversations belong to ceil(N/{CONVERSATIONS_PER_USER}) users who sign up over HTTP "
        f"(about {CONVERSATIONS_PER_USER} conversations per user); each conversation is its own websocket to "
        "`/ws/chat/new/`, and all N send their message at the same moment. Per-user limits are raised "
        "(`CHAT_MAX_CONCURRENT_GENERATIONS` = `CHAT_MESSAGES_PER_MINUTE` = 100000). A fresh daphne and a fresh "
        "database per level.",
        "",
        (
            f"**Settings:** `CHAT_FLUSH_INTERVAL` = {flush_ms / 1000:g} s (new text is published as soon as the "
            f"generation task has it, but at most once per {flush_ms:.0f} ms per answer; with deltas "
            f"{args.spacing * 1000:.0f} ms apart each one normally leaves at once), `CHAT_RENDER_BUDGET` = 0.1 and "
            "`CHAT_MAX_RENDER_INTERVAL` = 2 s (the unfinished markdown tail is re-rendered less often as more answers "
            "stream, at least every 2 s; the text never waits for it), "
            "`CHAT_SAVE_INTERVAL` = 1 s (each running answer is written about once a second, a tenth of them per "
            "database call every 0.1 s), `CHAT_STALE_AFTER` = 30 s; "
            f"each level's streaming phase is cut off after {args.level_timeout:.0f} s."
            if (results.get("app_facts") or {}).get("leading_edge_flush")
            else f"**Settings:** `CHAT_FLUSH_INTERVAL` = {flush_ms / 1000:g} s (deltas are coalesced and published every "
            f"{flush_ms:.0f} ms), `CHAT_SAVE_INTERVAL` = 1 s, `CHAT_STALE_AFTER` = 30 s; each level's streaming phase "
            f"is cut off after {args.level_timeout:.0f} s."
        ),
        "",
        "**How latency is counted:** every delta's text carries the wall-clock time at which the upstream wrote it; "
        "latency = when the load client read the websocket frame holding it − that time (a coalesced "
        "`message.delta` holds several deltas; each counts once). The **baseline** is the same measurement "
        "on N streams read straight from the upstream, without the app, by a plain asyncio reader. "
        "*Added* = app percentile − baseline percentile. **The coalescing wait is counted**: a delta waits for the "
        f"next flush, up to {flush_ms:.0f} ms by design, so some of the added latency may be there on purpose. "
        + (
            "The column *beyond the window* takes it out: daphne runs through a wrapper (in `bench/load.py`) "
            "that only stamps on each `message.delta` when the generation task got each delta and when the flush "
            f"began; each delta's wait, up to {flush_ms:.0f} ms, is subtracted; a wait beyond {flush_ms:.0f} ms "
            "(a late flush) stays counted as overhead."
            if instrumented
            else ""
        ),
        "",
    ]

    def table(title: str, backend: dict) -> list[str]:
        rows = [
            f"### {title}",
            "",
            "| N | app p50 / p99 (ms) | baseline p50 / p99 (ms) | **added p50 / p99 (ms)** | added beyond the "
            f"{flush_ms:.0f} ms window p50 / p99 (ms) | errors: failed answers / N | deltas/s app / baseline "
            "| answers/s | send → first delta p50 / p99 (ms) | most streams at once | daphne CPU | peak RSS (MiB) |",
            "|---:|---|---|---|---|---|---|---:|---|---:|---:|---:|",
        ]
        for n in args.levels:
            app = backend.get(n)
            base = results["baseline"].get(n) or {}
            if not app:
                continue
            if "fatal" in app:
                rows.append(f"| {n} | run failed: {app['fatal'][:200]} |" + " |" * 10)
                continue
            a, b = app["latency"], (base.get("latency") or {})
            beyond = app.get("beyond")
            detail = ", ".join(f"{k} {v}" for k, v in sorted(app["errors"].items()))
            b50, b99 = b.get("p50"), b.get("p99")
            rows.append(
                f"| {n} | {_fmt(a['p50'])} / {_fmt(a['p99'])} | {_fmt(b50)} / {_fmt(b99)} "
                f"| **{_fmt(_diff(a['p50'], b50))} / {_fmt(_diff(a['p99'], b99))}** "
                f"| {_fmt(_diff(beyond['p50'], b50)) if beyond else '–'} / {_fmt(_diff(beyond['p99'], b99)) if beyond else '–'} "
                f"| **{app['failed_answers']}** / {n}{' (' + detail + ')' if detail else ''} "
                f"| {_fmt(app.get('deltas_per_s'), 0)} / {_fmt(base.get('deltas_per_s'), 0)} "
                f"| {_fmt(app.get('answers_per_s'))} "
                f"| {_fmt(app['first_delta']['p50'], 0)} / {_fmt(app['first_delta']['p99'], 0)} "
                f"| {app.get('upstream_peak_streams', '–')} "
                f"| {_fmt((app.get('daphne_cpu') or 0) * 100, 0)} % "
                f"| {_fmt(app.get('peak_rss_mib'), 0)} |"
            )
        rows += [
            "",
            "*most streams at once*: the largest number of answers the upstream was streaming at the same time "
            "(below N when the app starts answers more slowly than they finish). *deltas/s*: deltas received by "
            "the client ÷ time from the first send to the last `message.end`. *daphne CPU*: 100 % = one core. "
            "An answer counts as failed when its socket was refused or closed, it got an `error` event, its "
            "`message.end` was missing or not `complete`, or deltas were missing.",
            "",
        ]
        return rows

    lines += table("SQLite (default), in-memory channel layer", results["sqlite"])
    for note in results.get("notes") or []:
        lines += [f"*Note:* {note}", ""]
    for n, plain in (results.get("plain_check") or {}).items():
        wrapped = results["sqlite"].get(n) or {}
        if "fatal" in plain or "fatal" in wrapped or not wrapped:
            continue
        lines += [
            f"Check without the timestamp wrapper: the same N = {n} load on plain `python -m chatsite.serve` gave app latency "
            f"p50 / p99 {_fmt(plain['latency']['p50'])} / {_fmt(plain['latency']['p99'])} ms, "
            f"{plain['failed_answers']} failed answers, {_fmt(plain.get('deltas_per_s'), 0)} deltas/s, most streams "
            f"at once {plain.get('upstream_peak_streams')} (wrapped: {_fmt(wrapped['latency']['p50'])} / "
            f"{_fmt(wrapped['latency']['p99'])} ms, {wrapped['failed_answers']}, {_fmt(wrapped.get('deltas_per_s'), 0)}, "
            f"{wrapped.get('upstream_peak_streams')}).",
            "",
        ]
    lines += sustained_section(results)
    if results.get("postgres"):
        stock = getattr(args, "redis_stock", False)
        lines += table(
            "PostgreSQL + Redis (`DATABASE_URL`, `REDIS_URL`, channels_redis)"
            + ("" if stock else " — `REDIS_URL` with `?socket_timeout=30`, see below"),
            results["postgres"],
        )
        check = results.get("redis_check") or {}
        if check and not stock and "after" in str(check.get("outcome")):
            lines += [
                f"**Redis note 1 (worked around above):** with the stock `REDIS_URL` a channel-layer receive that "
                f"waits longer than 5 s fails: an idle `receive()` on `{check.get('url')}` (redis-py "
                f"{check.get('redis_py', '?')}, channels_redis {check.get('channels_redis', '?')}) ended with "
                f"`{check.get('outcome')}`. redis-py 8 gives every connection a 5 s `socket_timeout` by default and "
                "channels_redis blocks on `BZPOPMIN` for 5 s, so a quiet socket's receive raises, the consumer dies "
                "and its websocket closes; a generation's listener dies too, so Stop and late-joiner snapshots stop "
                "working for that answer. This happens under load or not, so the table passes "
                "`?socket_timeout=30` in `REDIS_URL` (redis-py reads it from the URL) to measure load rather than "
                "this bug. Fix in the app: pin `redis<8`, or set `socket_timeout` above 5 s in `CHANNEL_LAYERS`.",
                "",
            ]
        if check.get("cancel_swallowed") and (results.get("app_facts") or {}).get("ticker_stopped_by_cancel", True):
            lines += [
                f"**Redis note 2 (not worked around):** a task cancelled while it awaits `group_send` often carries "
                f"on as if it had not been cancelled: {check['cancel_swallowed']} of {check['cancel_trials']} "
                "cancellations at random moments were swallowed (redis-py's async client; compare "
                "redis/redis-py#2028 and #2666). `Generation.run` ends an answer with `ticker.cancel()` then "
                "`await asyncio.gather(ticker)`; when the cancel lands in the ticker's `flush()` → `group_send`, the "
                "ticker keeps looping (saving heartbeats, so the sweeper never marks the answer interrupted) and "
                "`run` waits forever: the answer never gets `message.end`, stays `streaming`, and the conversation "
                "refuses new messages. In the table they show up as `unfinished_at_timeout` (at high N, overload adds "
                "its own).",
                "",
            ]

    for backend_name, backend in (("SQLite", results["sqlite"]), ("PostgreSQL + Redis", results.get("postgres") or {})):
        rows = []
        for n in args.levels:
            app = backend.get(n)
            if not app or "fatal" in app or "inbound" not in app:
                continue
            probe = app.get("probe") or {}
            mid, base_mid = app.get("mid") or {}, (results["baseline"].get(n) or {}).get("mid") or {}
            rows.append(
                f"| {n} | {_fmt(mid.get('p50'))} / {_fmt(mid.get('p99'))} ({_fmt(base_mid.get('p50'))} / {_fmt(base_mid.get('p99'))}) "
                f"| {_fmt(app['inbound']['p50'])} / {_fmt(app['inbound']['p99'])} "
                f"| {_fmt(app['wait']['p50'])} / {_fmt(app['wait']['p99'])} "
                f"| {_fmt(app['post_flush']['p50'])} / {_fmt(app['post_flush']['p99'])} "
                f"| {_fmt(probe.get('sync_hop_p50'))} / {_fmt(probe.get('sync_hop_p99'))} / {_fmt(probe.get('sync_hop_max'))} "
                f"| {_fmt(probe.get('loop_lag_p99'))} / {_fmt(probe.get('loop_lag_max'))} "
                f"| {_fmt(app.get('wall_s'))} | {_fmt(app.get('other_cores'), 2)} |"
            )
        if rows:
            lines += [
                f"### Where a delta's time goes ({backend_name})",
                "",
                "| N | mid-answer app latency p50 / p99 (baseline) | upstream → generation task p50 / p99 "
                "| coalescing wait p50 / p99 | flush → client read p50 / p99 "
                "| sync-thread round trip p50 / p99 / max | event-loop lag p99 / max | wall time (s) "
                "| other processes (cores) |",
                "|---:|---|---|---|---|---|---|---:|---:|",
                *rows,
                "",
                "All in ms unless marked. *mid-answer*: only the deltas in the middle 60 % of each answer, away from "
                "the burst of N answers starting and finishing together (same for the baseline, in brackets). "
                "*upstream → generation task*: from the upstream's write until the "
                "generation task has the parsed event. *coalescing wait*: from then until the flush that publishes "
                f"it (design: 0–{flush_ms:.0f} ms). *flush → client read*: markdown rendering, channel layer, "
                "consumer, daphne's websocket write, the client's read. *sync-thread round trip*: a probe in daphne "
                "awaits a no-op `sync_to_async` every 100 ms: the wait for the one thread that runs every "
                "`database_sync_to_async` call and the `close_old_connections()` that channels runs before each "
                "consumer event. *event-loop lag*: how late the probe's 100 ms sleep wakes up. *other processes*: "
                "CPU used on the machine by processes that are not part of the benchmark during the level.",
                "",
            ]

    setup = []
    for n in args.levels:
        base = results["baseline"].get(n) or {}
        hx = (results.get("baseline_httpx") or {}).get(n) or {}
        if not base or "fatal" in base:
            continue
        late = base.get("upstream_late") or {}
        hx_lat = hx.get("latency") or {}
        setup.append(
            f"| {n} | {_fmt(base['latency']['p50'])} / {_fmt(base['latency']['p99'])} "
            f"| {_fmt(100 * base['client_cpu_s'] / base['go_s'] if base.get('go_s') else None, 0)} % "
            f"| {_fmt(late.get('late_p99_ms'))} "
            f"| {_fmt(hx_lat.get('p50'))} / {_fmt(hx_lat.get('p99'))} "
            f"| {_fmt(100 * hx['client_cpu_s'] / hx['go_s'] if hx.get('go_s') else None, 0)} % "
            f"| {_fmt(base.get('other_cores'), 2)} |"
        )
    if setup:
        lines += [
            "### The measuring setup itself (no app)",
            "",
            "| N | baseline p50 / p99 (ms) | baseline client CPU | upstream's own lateness p99 (ms) "
            "| httpx reader p50 / p99 (ms) | httpx reader CPU | other processes during the baseline (cores) |",
            "|---:|---|---:|---:|---|---:|---:|",
            *setup,
            "",
            "The baseline reader is plain asyncio streams. The same N streams read with httpx (`aiter_raw`, as the "
            "app's upstream client reads them) are shown for comparison: httpx costs several times the CPU per "
            "event, so an httpx baseline would saturate its own core and inflate the floor at high N. *upstream's "
            "own lateness*: how late the fake upstream wrote deltas relative to its 20 ms schedule (the timestamps "
            "are taken at the write, so lateness does not distort the latency figures, only the offered load).",
            "",
        ]

    before = results.get("before")
    if before:
        rows = []
        for backend, title in (("sqlite", "SQLite"), ("postgres", "PostgreSQL + Redis")):
            for n in sorted(int(k) for k in (before.get(backend) or {})):
                app = before[backend][str(n)] if str(n) in before[backend] else before[backend][n]
                base = (before.get("baseline") or {}).get(str(n)) or {}
                if "fatal" in app:
                    continue
                beyond = app.get("beyond") or {}
                b99 = (base.get("latency") or {}).get("p99")
                detail = ", ".join(f"{k} {v}" for k, v in sorted(app["errors"].items()))
                first = app.get("first_delta") or {}
                rows.append(
                    f"| {title} | {n} | {_fmt(app['latency']['p50'])} / {_fmt(app['latency']['p99'])} "
                    f"| {_fmt(_diff(beyond.get('p99'), b99))} | {_fmt(first.get('p50'), 0)} / {_fmt(first.get('p99'), 0)} "
                    f"| {app['failed_answers']} / {n}{' (' + detail + ')' if detail else ''} "
                    f"| {_fmt(app.get('deltas_per_s'), 0)} | {app.get('upstream_peak_streams', '–')} "
                    f"| {_fmt((app.get('daphne_cpu') or 0) * 100, 0)} % | {_fmt(app.get('peak_rss_mib'), 0)} |"
                )
        if rows:
            lines += [
                f"### Before ({_commit_of(before.get('app'))}, {before.get('date', '')})",
                "",
                (
                    before["note"]
                    if before.get("note")
                    else "The same load on the code of the previous run"
                    + ("; PostgreSQL rows with `?socket_timeout=30` added to `REDIS_URL`" if not (before.get("args") or {}).get("redis_stock") else "")
                )
                + ":",
                "",
                "| backend | N | app p50 / p99 (ms) | added beyond the window p99 (ms) | send → first delta p50 / p99 (ms) "
                "| errors | deltas/s | most streams at once | daphne CPU | peak RSS (MiB) |",
                "|---|---:|---|---:|---|---|---:|---:|---:|---:|",
                *rows,
                "",
            ]

    micro = results.get("sqlite_micro")
    lines += conclusions(results, args, micro)
    profile = results.get("profile")
    if profile and "buckets" in profile:
        lines += [
            f"### Hot spots (py-spy, N = {profile['n']}, a separate run of the same load)",
            "",
            f"{profile['samples']:,} busy samples of the daphne process's threads at 100 Hz over 30 s of the "
            "streaming phase (py-spy `record --threads --nonblocking`; samples of a thread waiting in `select()` or "
            "for work are left out). Shares are of the busy samples. "
            + "Threads: " + ", ".join(f"{name} {_fmt(pct, 0)} %" for name, pct in profile.get("threads", [])[:3]) + ".",
            "",
            "| innermost library on the stack | share of samples |",
            "|---|---:|",
        ]
        lines += [f"| {label} | {_fmt(pct)} % |" for label, pct in profile["buckets"][:12]]
        lines += ["", "| function, inclusive (it or its callees running) | share of samples |", "|---|---:|"]
        lines += [f"| `{name}` | {_fmt(pct)} % |" for name, pct in profile["inclusive"][:16]]
        lines += ["", "| function, self time | share of samples |", "|---|---:|"]
        lines += [f"| `{name}` | {_fmt(pct)} % |" for name, pct in profile["self"][:10]]
        lines += [""]
    elif profile:
        lines += [f"Profiling did not work: {profile.get('error', '')}", ""]
    lines += [
        "Reproduce: `python bench/load.py` (also part of `make bench`): SQLite, every level, the sustained run at "
        "N = 100 and 200 (`--sustained`), a plain-daphne check "
        "at N = 100, and a py-spy run at N = 200 when `py-spy` is on `PATH` (or `--py-spy PATH`); `--pg` adds the "
        "PostgreSQL + Redis table (both on loopback; a fresh database per level, keys `asgi*` of the Redis "
        "database are cleared). This run: `python bench/load.py"
        + (" --pg" if getattr(args, "pg", False) else "")
        + (" --redis-stock" if getattr(args, "redis_stock", False) else "")
        + " --app-dir <git archive of HEAD> --before-results <an earlier run's results.json>`. Raw JSON results "
        "and every process's log stay in the temporary directory printed at the end; `--from-results "
        "DIR/results.json` rewrites this section from them (this run's are kept as "
        f"`bench/results-{(re.search(r'commit `([0-9a-f]+)`', results.get('app') or '') or [None, 'COMMIT'])[1]}.json`).",
        "",
    ]
    return "\n".join(lines)


def _added(results: dict, backend: str, n: int, key: str = "latency", q: str = "p99") -> float | None:
    app = (results.get(backend) or {}).get(n) or {}
    base = (results["baseline"].get(n) or {}).get("latency") or {}
    if not app or "fatal" in app or key not in app:
        return None
    return _diff(app[key][q], base.get(q))


def sustained_section(results: dict) -> list[str]:
    """The sustained run: N streams held at once, without everyone sending in the same second."""
    sustained = results.get("sustained") or {}
    if not sustained:
        return []
    run = results.get("args") or {}
    deltas, stagger = run.get("sustained_deltas", 400), run.get("stagger", 2.0)
    spacing = run.get("spacing", 0.02)
    lines = [
        "### Sustained: N streams at once, sends spread out (SQLite)",
        "",
        f"The same app and setup, but each answer is {deltas} deltas ({deltas * spacing:g} s) and the N sends are "
        f"spread evenly over {stagger:g} s (the baseline's requests likewise), so that N answers stream together "
        f"for about {deltas * spacing - stagger:g} s without the whole herd's starts and finishes landing in the "
        "same second. This is the load of N people reading answers at once; the table above is the stress case "
        "of N people pressing Send in the same moment.",
        "",
        "| N | app p50 / p99 (ms) | baseline p50 / p99 (ms) | **added p50 / p99 (ms)** | added mid-answer p99 (ms) "
        "| errors: failed answers / N | deltas/s app / baseline | most streams at once | daphne CPU | peak RSS (MiB) |",
        "|---:|---|---|---|---:|---|---|---:|---:|---:|",
    ]
    for n in sorted(sustained, key=int):
        app, base = sustained[n].get("app") or {}, sustained[n].get("baseline") or {}
        if "fatal" in app or "fatal" in base or not app or not base:
            lines.append(f"| {n} | failed: {(app.get('fatal') or base.get('fatal') or '')[:120]} |||||||||")
            continue
        lat, blat = app["latency"], base["latency"]
        mid = _diff((app.get("mid") or {}).get("p99"), (base.get("mid") or {}).get("p99"))
        lines.append(
            f"| {n} | {_fmt(lat['p50'])} / {_fmt(lat['p99'])} | {_fmt(blat['p50'])} / {_fmt(blat['p99'])} "
            f"| **{_fmt(_diff(lat['p50'], blat['p50']))} / {_fmt(_diff(lat['p99'], blat['p99']))}** | {_fmt(mid)} "
            f"| **{app['failed_answers']}** / {n} | {_fmt(app.get('deltas_per_s'), 0)} / {_fmt(base.get('deltas_per_s'), 0)} "
            f"| {app.get('upstream_peak_streams')} | {_fmt((app.get('daphne_cpu') or 0) * 100, 0)} % "
            f"| {_fmt(app.get('peak_rss_mib'), 0)} |"
        )
    lines.append("")
    return lines


def _sustained_added(results: dict, n: int) -> tuple[float | None, int | None]:
    level = (results.get("sustained") or {}).get(n) or (results.get("sustained") or {}).get(str(n)) or {}
    app, base = level.get("app") or {}, level.get("baseline") or {}
    if not app or not base or "fatal" in app or "fatal" in base:
        return None, None
    return _diff(app["latency"]["p99"], base["latency"]["p99"]), app["failed_answers"]


def conclusions(results: dict, args: argparse.Namespace, micro: dict | None) -> list[str]:
    out = ["### Conclusion", ""]
    sqlite = results["sqlite"]
    flush_ms = FLUSH_INTERVAL_MS
    smallest = min(args.levels)

    if 200 in sqlite and "fatal" not in sqlite[200]:
        app = sqlite[200]
        raw, beyond, errors = _added(results, "sqlite", 200), _added(results, "sqlite", 200, "beyond"), app["failed_answers"]
        met_raw = raw is not None and raw <= 25 and errors == 0
        met_beyond = beyond is not None and beyond <= 25 and errors == 0
        text = (
            f"- **Target at 200 streams (p99 added ≤ 25 ms, zero errors): {'met' if met_raw else 'NOT met'}.** "
            f"p99 added latency {_fmt(raw)} ms, {errors} failed answers of 200"
        )
        if beyond is not None:
            text += (
                f"; even without the {flush_ms:.0f} ms coalescing wait the app adds p99 {_fmt(beyond)} ms "
                + ("(within 25 ms)." if met_beyond else f"({_fmt(beyond / 25, 0)}× the target).")
            )
        else:
            text += "."
        out.append(text)
        if not (results.get("app_facts") or {}).get("leading_edge_flush"):
            out.append(
                f"- **The target cannot be met with the coalescing counted, at any load:** a flush every "
                f"{flush_ms:.0f} ms alone gives a delta a p99 wait of about {flush_ms * 0.99:.0f} ms. "
                "A 25 ms p99 with coalescing counted needs `CHAT_FLUSH_INTERVAL` ≤ ~20 ms (p99 wait ≈ 20 ms) plus "
                "≤ 5 ms of processing; measured *beyond the window* is the fair test of the app's own overhead."
            )
    within = [
        n for n in args.levels
        if n in sqlite and "fatal" not in sqlite[n] and not sqlite[n]["failed_answers"]
        and (_added(results, "sqlite", n) or 1e9) <= 25
    ]  # fmt: skip
    out.append(
        "- **Largest N measured within the target (p99 added ≤ 25 ms, zero errors), SQLite:** "
        + (f"N = {max(within)}." if within else "none of the levels measured.")
        + " Added p99 by level: "
        + ", ".join(f"{_fmt(_added(results, 'sqlite', n))} ms at N = {n}" for n in args.levels if n in sqlite and "fatal" not in sqlite[n])
        + "."
    )

    before = results.get("before") or {}
    firsts = []
    for n in (100, 200):
        now, then = (sqlite.get(n) or {}).get("first_delta"), ((before.get("sqlite") or {}).get(str(n)) or {}).get("first_delta")
        if now and then:
            firsts.append(f"{_fmt(now['p50'], 0)} ms at N = {n} (before: {_fmt(then['p50'], 0)} ms)")
    if firsts:
        out.append(
            "- **Time to the first words of a burst (send → first delta, p50):** " + ", ".join(firsts) + ". "
            "An answer's request goes upstream as soon as its turn is saved; the answers that start first then "
            "stream while the rest of the burst's turns are still being saved, and share the process with them"
            + (
                f": at N = 100 the deltas in the middle 60 % of each answer have p99 "
                f"{_fmt(sqlite[100]['mid']['p99'])} ms, all deltas {_fmt(sqlite[100]['latency']['p99'])} ms."
                if (sqlite.get(100) or {}).get("mid") else "."
            )
        )
    for n in (100, 200):
        added, failed = _sustained_added(results, n)
        if added is not None:
            out.append(
                f"- **Sustained, {n} streams at once (sends spread out):** p99 added {_fmt(added)} ms, {failed} failed "
                f"answers: {'within' if added <= 25 and not failed else 'NOT within'} the 25 ms target."
            )
    if 200 in sqlite and "fatal" not in sqlite[200] and (sqlite[200].get("mid") or {}).get("p99") is not None:
        app, base = sqlite[200], results["baseline"].get(200) or {}
        mid = _diff(app["mid"]["p99"], (base.get("mid") or {}).get("p99"))
        everything = _added(results, "sqlite", 200)
        if mid is not None and everything is not None and mid > everything / 2:
            out.append(
                f"- **At 200 streams the whole answer is late, not only its start and end:** deltas in the middle 60 % "
                f"of each answer have p99 added {_fmt(mid)} ms, all deltas {_fmt(everything)} ms: the process is short "
                "of CPU for 200 streams at this pace (below)."
            )
        else:
            out.append(
                f"- **At 200 streams the tail comes from the answers starting and ending together:** deltas in the "
                f"middle 60 % of each answer have p99 added {_fmt(mid)} ms, all deltas {_fmt(everything)} ms. All 200 "
                "answers start within the same second and finish within the same second, and each start and finish "
                "is work for the process (the turn's rows and limit checks on the one database thread, whose Python "
                "holds the GIL the event loop needs; the upstream request; the final save and the title) on top of "
                "the streams already running."
            )

    pg = results.get("postgres") or {}
    for n in (200,):
        app = pg.get(n)
        if app and "fatal" not in app:
            out.append(
                f"- **PostgreSQL + Redis at {n} streams:** p99 added {_fmt(_added(results, 'postgres', n))} ms, "
                f"beyond the window {_fmt(_added(results, 'postgres', n, 'beyond'))} ms, {app['failed_answers']} failed "
                f"answers ({', '.join(f'{k} {v}' for k, v in sorted(app['errors'].items())) or 'none'}): not met either."
                if app["failed_answers"] or (_added(results, "postgres", n, "beyond") or 0) > 25
                else f"- **PostgreSQL + Redis at {n} streams:** met beyond the window."
            )

    rates = [(n, sqlite[n]) for n in args.levels if n in sqlite and "fatal" not in sqlite[n]]
    if rates:
        best_n, best = max(rates, key=lambda item: item[1].get("deltas_per_s") or 0)
        real_time = 1 / args.spacing  # deltas a second one stream needs
        out.append(
            f"- **Throughput (SQLite):** at most {_fmt(best.get('deltas_per_s'), 0)} deltas/s reached the clients "
            f"(N = {best_n}, {_fmt(best.get('answers_per_s'))} answers/s), about {_fmt((best.get('deltas_per_s') or 0) / real_time, 0)} "
            f"streams' worth at the upstream's pace of {real_time:.0f} deltas/s per stream (the baseline read "
            f"{_fmt((results['baseline'].get(best_n) or {}).get('deltas_per_s'), 0)} deltas/s at that N). Websocket frames "
            "delivered per second: "
            + ", ".join(f"{_fmt(app.get('messages_per_s'), 0)} at N = {n}" for n, app in rates)
            + (
                " — each frame waited for its turn on the one database thread (below)."
                if (results.get("app_facts") or {}).get("relay_hops_to_db_thread", True)
                else " — more streams do not get more frames out: each stream gets fewer."
            )
        )

    # Where it breaks.
    breaks = []
    for n in args.levels:
        app = sqlite.get(n) or {}
        if not app:
            continue
        if "fatal" in app:
            breaks.append(f"N = {n}: the run failed")
            continue
        why = []
        if app["failed_answers"]:
            why.append(f"{app['failed_answers']} failed answers ({', '.join(f'{k} {v}' for k, v in sorted(app['errors'].items()))})")
        beyond = _added(results, "sqlite", n, "beyond")
        if beyond is not None and beyond > 25:
            why.append(f"p99 beyond the window {_fmt(beyond, 0)} ms")
        peak = app.get("upstream_peak_streams")
        if peak is not None and peak < 0.9 * n:
            why.append(f"never more than {peak} of the {n} answers streaming at once")
        if why:
            breaks.append(f"N = {n}: " + "; ".join(why))
    if breaks:
        out.append("- **Where it breaks (SQLite):** " + " · ".join(breaks) + ".")
    else:
        out.append(f"- No level up to N = {max(args.levels)} broke (p99 beyond the window ≤ 25 ms, no errors).")

    # Why: only the mechanisms the measurements point at (and the code measured has).
    why = []
    facts = results.get("app_facts") or {}
    hops = [(n, (sqlite.get(n) or {}).get("probe") or {}) for n in args.levels]
    hops = [(n, p) for n, p in hops if p.get("sync_hop_p99") is not None]
    if hops and max(p["sync_hop_p99"] for _, p in hops) > 25:
        worst = ", ".join(f"N = {n}: p50 {_fmt(p['sync_hop_p50'], 0)} / p99 {_fmt(p['sync_hop_p99'], 0)} ms" for n, p in hops)
        if facts.get("relay_hops_to_db_thread", True):
            why.append(
                "**Everything waits for one thread.** Every database call of the app (`database_sync_to_async`) and — "
                "because channels 4.3's `AsyncConsumer.dispatch` awaits `aclose_old_connections()` (a thread-sensitive "
                "`sync_to_async(close_old_connections)`) before every handler — *every event relayed to every socket* "
                "runs on asgiref's single thread-sensitive executor thread. So a delta cannot reach its socket until "
                "the database work queued ahead of it is done. The probe's round trip through that thread: " + worst + "."
            )
        else:
            why.append(
                "**The database work waits for one thread.** Events are relayed to sockets without a database hop, "
                "but every database call (`database_sync_to_async`: starting a turn, the process's save rounds, "
                "finishing, titles) still runs on asgiref's single "
                "thread-sensitive executor thread, one at a time, and its Python work (Django's ORM compiles each "
                "query) holds the GIL the event loop needs. The probe's round trip through that thread: " + worst + "."
            )
    if micro and facts.get("conn_max_age_0", True):
        why.append(
            "**Each database call pays for a connection.** `conn_max_age=0` closes the connection after every "
            "`database_sync_to_async` call; with SQLite in WAL mode, closing the last connection checkpoints the WAL "
            f"and syncs the disk. On this disk one small write with open/close took {_fmt(micro['open_write_close_ms'])} ms, "
            f"on a kept-open connection {_fmt(micro['persistent_write_ms'], 2)} ms. Each generation writes once a second "
            "(`save_partial`: a SELECT and a full UPDATE) and each answer costs four more calls (create the "
            "conversation, `begin_turn` with its limit queries, claim the worker channel, finish), each opening a "
            "new connection (Django's SQLite backend also registers its SQL functions on every new connection) and "
            "closing it, all on that one thread."
        )
    waits = [(n, (sqlite.get(n) or {}).get("wait")) for n in args.levels]
    late = [(n, w) for n, w in waits if w and w["p99"] > 1.5 * flush_ms]
    if late and facts.get("tick_awaits_save", True):
        why.append(
            "**A stream's flushes stop while its save waits.** `Generation._tick` awaits `_save()` before its next "
            "flush, so when the thread is backed up the 40 ms cadence stretches: coalescing wait p99 "
            + ", ".join(f"{_fmt(w['p99'], 0)} ms at N = {n}" for n, w in late) + "."
        )
    interrupted = [n for n in args.levels if ((sqlite.get(n) or {}).get("errors") or {}).get("end_status_interrupted")]
    if interrupted:
        why.append(
            "**Live answers are declared dead.** When the heartbeat save of a running answer waits in that queue "
            "longer than `CHAT_STALE_AFTER` (30 s), the process's own sweeper marks it `interrupted` and ends it "
            f"(N = {', '.join(map(str, interrupted))}): under overload the failure detector produces false positives."
        )
    busy = [(n, (sqlite.get(n) or {}).get("daphne_cpu")) for n in args.levels]
    busy = [(n, c) for n, c in busy if c is not None]
    per_delta = [
        (n, c / sqlite[n]["deltas_per_s"] * 1e6) for n, c in busy if (sqlite[n].get("deltas_per_s") or 0) > 0
    ]  # fmt: skip
    if per_delta and facts.get("leading_edge_flush"):
        cost = min(us for _, us in per_delta)
        why.append(
            "**Each delta costs CPU in the one process, and the load is 50 deltas/s per stream.** daphne's CPU time "
            "per delta delivered (reading and parsing the upstream's event, the answer's bookkeeping, its share of "
            "a websocket frame and of markdown rendering, and each answer's database work spread over its "
            "deltas): " + ", ".join(f"{_fmt(us, 0)} µs at N = {n}" for n, us in per_delta)
            + f". At {_fmt(cost, 0)} µs one core carries about {_fmt(1e6 / cost, 0)} deltas/s, "
            f"{_fmt(1e6 / cost * args.spacing, 0)} streams at this pace, before any queue forms; "
            f"the load client and the fake upstream share the machine's {os.cpu_count()} cores with it."
        )
    if busy:
        saturated = [n for n, c in busy if c >= 0.9]
        why.append(
            "**CPU:** daphne used "
            + ", ".join(f"{_fmt(c * 100, 0)} %" + f" at N = {n}" for n, c in busy)
            + " of one core. "
            + (
                f"From N = {saturated[0]} it uses a whole core: one Python process has one event loop and one GIL, "
                "shared with the database thread, so more load only makes the queues longer."
                if saturated
                else "The process is not CPU-bound: it is waiting on the one thread, not computing."
            )
        )
    profile = results.get("profile") or {}
    clean = dict(profile.get("self") or []).get("InMemoryChannelLayer._clean_expired (channels/layers.py)")
    if clean and clean >= 3:
        why.append(
            "**The in-memory channel layer walks every channel on every message.** `InMemoryChannelLayer` calls "
            "`_clean_expired()` — a loop over all channels and all groups of the process — in every `send`, "
            f"`receive` and `group_send`: {_fmt(clean)} % of the busy samples at N = {profile['n']} (self time), "
            "and it grows with N × messages, i.e. quadratically."
        )
    pg10 = (results.get("postgres") or {}).get(smallest) or {}
    if pg10.get("post_flush") and pg10["post_flush"]["p50"] > 100 and (pg10.get("daphne_cpu") or 1) < 0.5:
        why.append(
            f"**With Redis, deltas wait for the channel layer even when idle:** at N = {smallest} a delta spent "
            f"p50 {_fmt(pg10['post_flush']['p50'], 0)} ms between its flush and the client while daphne used "
            f"{_fmt(pg10['daphne_cpu'] * 100, 0)} % of a core — waiting, not computing. channels_redis takes every "
            "message for every socket and generation of a process off one Redis list, one at a time under a lock, "
            "with a second round trip to clean its backup queue; that serial path (not isolated further here) is "
            "the likely limit."
        )
    if profile.get("buckets"):
        top = ", ".join(f"{label} {_fmt(pct, 0)} %" for label, pct in profile["buckets"][:5])
        why.append(f"**Profile at N = {profile['n']}** (busy samples by innermost library): {top}.")
    if why:
        out += ["", "Why:", ""] + [f"{i}. {text}" for i, text in enumerate(why, 1)]
    other = [(n, (sqlite.get(n) or {}).get("other_cores")) for n in args.levels]
    noisy = [(n, c) for n, c in other if c is not None and c > 0.25]
    if noisy:
        out += [
            "",
            "Caveat: other processes on this machine used CPU during some levels ("
            + ", ".join(f"{_fmt(c, 2)} cores at N = {n}" for n, c in noisy)
            + "); those levels' numbers are somewhat pessimistic.",
        ]
    out.append("")
    return out


def write_section(path: Path, section: str) -> None:
    """Replace our section of the file (up to the next '## ' heading); keep the rest."""
    if path.exists():
        text = path.read_text()
        start = text.find(SECTION)
        if start >= 0:
            rest = text[start + len(SECTION) :]
            match = re.search(r"^## ", rest, flags=re.M)
            end = start + len(SECTION) + match.start() if match else len(text)
            text = text[:start] + section.rstrip() + "\n\n" + text[end:].lstrip("\n")
        else:
            text = text.rstrip() + "\n\n" + section
    else:
        text = "# Benchmarks\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")


# =============================================================================
# Entry point
# =============================================================================


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="10,100,200,500,1000", help="comma-separated concurrency levels")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--deltas", type=int, default=100, help="text deltas per answer")
    parser.add_argument("--spacing", type=float, default=0.02, help="seconds between two deltas")
    parser.add_argument("--sustained", default="100,200",
                        help="levels of the sustained run (longer answers, sends spread out; '' for none)")
    parser.add_argument("--sustained-deltas", type=int, default=400, help="text deltas per answer in the sustained run")
    parser.add_argument("--stagger", type=float, default=2.0,
                        help="sustained run: the N sends are spread evenly over this many seconds")
    parser.add_argument("--level-timeout", type=float, default=120.0, help="seconds for one level's streaming phase")
    parser.add_argument("--signup-timeout", type=float, default=300.0)
    parser.add_argument("--pg", action="store_true", help="also run every level on PostgreSQL + Redis")
    parser.add_argument("--skip-sqlite", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pg-admin-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    parser.add_argument("--redis-stock", action="store_true",
                        help="give daphne REDIS_URL as is (default: add ?socket_timeout=30, see the report)")
    parser.add_argument("--profile", type=int, default=200, help="N of an extra run under py-spy (0: none)")
    parser.add_argument("--py-spy", default="", help="the py-spy executable (default: from PATH)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each measurement, wait up to this many seconds for other processes to go quiet")
    parser.add_argument("--app-dir", default=str(ROOT), help="the app to run (default: this checkout)")
    parser.add_argument("--app-note", default="", help="how the report names the code measured (default: from git)")
    parser.add_argument("--before-results", default="",
                        help="a results.json of an earlier run (before changes), summarised in a table of its own")
    parser.add_argument("--from-results", default="", help="only rewrite the report from a results.json of an earlier run")
    parser.add_argument("--plain-check", type=int, default=100,
                        help="run this N once more on plain `python -m chatsite.serve`, to compare (0: skip)")
    parser.add_argument("--plain-daphne", action="store_true", help="run `python -m chatsite.serve` without the timestamps")
    # internal modes
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-lifetime", type=float, default=3600.0, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=["app", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", choices=["raw", "httpx"], default="raw", help=argparse.SUPPRESS)
    parser.add_argument("--flush-interval", type=float, default=FLUSH_INTERVAL_MS / 1000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in str(args.n).split(",") if x.strip()]
    args.sustained_levels = [int(x) for x in str(args.sustained).split(",") if x.strip()]
    if args.client:
        args.n = args.levels[0]
    return args


def main(argv: list[str]) -> None:
    if argv[:1] == ["--daphne"]:
        run_daphne_instrumented(argv[1:])
        return
    args = parse_args(argv)
    global FLUSH_INTERVAL_MS
    if not args.client:
        FLUSH_INTERVAL_MS = _flush_interval_ms(Path(args.app_dir))
    if args.serve_upstream:
        serve_upstream(args)
    elif args.client:
        run_client(args)
    elif args.from_results:
        results = json.loads(Path(args.from_results).read_text())
        raw = Path((results.get("profile") or {}).get("path") or Path(args.from_results).parent / "missing")
        if raw.exists():  # re-analyse with this version of the code
            results["profile"] = {"n": results["profile"]["n"], "path": str(raw), **analyse_profile(raw.read_text())}
        for key in ("sqlite", "postgres", "baseline", "baseline_httpx", "plain_check"):
            results[key] = {int(n): value for n, value in results.get(key, {}).items()}
        for key, value in results.get("args", {}).items():
            setattr(args, key, value)
        if args.before_results:
            results["before"] = json.loads(Path(args.before_results).read_text())
        write_section(Path(args.out), render_report(results, args, results["machine"]))
    else:
        Bench(args).run()


if __name__ == "__main__":
    main(sys.argv[1:])
