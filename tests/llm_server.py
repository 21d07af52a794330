"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks (aiohttp).

Serves `GET /v1/models`, `GET /stats` (counters) and `POST /v1/chat/completions`. Replies are deterministic and derived
from the prompt: the text is `echo: <last user message>`; with a `response_format` carrying a JSON
schema the reply is a JSON object that satisfies it, with every string property set to the echo.

Faults on demand, per prompt, with a marker in the (first) user message:

    "... #fault=429,500 ..."  attempt 1 -> 429, attempt 2 -> 500, then normal replies
    "... #fault=503* ..."     `*`: that fault forever

Fault names: 429 (with Retry-After, `retry_after` seconds), 500, 503, 400, 401 (quotes the
bearer key in its message, as OpenAI does), slow (sleeps
`slow_s` before answering, past the client's timeout), reset (drops the connection),
truncated (a body cut short of its Content-Length), malformed (200 with a non-JSON body),
badschema (valid reply whose content violates the schema), empty (no choices), length (a normal
reply with finish_reason "length", as when cut off at max_tokens).
Attempts are counted per prompt (the first user message), so a repair turn counts as the next
attempt. `latency` (fixed seconds, or a (lo, hi) range drawn per request) makes replies arrive
out of order.

In-process: `with LoopbackLLMServer(latency=0.01) as srv: srv.base_url`.
As a subprocess: `python tests/llm_server.py --port 0 --latency 0.05` prints `PORT <n>` then serves
(`--engine raw`: a minimal HTTP implementation with fixed latency and no faults, for benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from typing import Any

from aiohttp import web

FAULT_RE = re.compile(r"#fault=([A-Za-z0-9,*]+)")


def _first_user(messages: list[dict[str, Any]]) -> str:
    for m in messages:
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def echo_text(prompt: str) -> str:
    """What the server answers to a plain prompt (tests derive expectations from this)."""
    return f"echo: {prompt}"


def value_for(schema: dict[str, Any], echo: str) -> Any:
    """A value that satisfies a (simple) JSON schema, derived from the echo."""
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type", "object")
    if isinstance(t, list):
        t = [x for x in t if x != "null"][0] if any(x != "null" for x in t) else "null"
    if t == "object":
        props = schema.get("properties", {})
        return {k: value_for(v, echo) for k, v in props.items()}
    if t == "array":
        return [value_for(schema.get("items", {"type": "string"}), echo)] * max(1, schema.get("minItems", 1))
    if t == "string":
        return echo[: schema["maxLength"]] if "maxLength" in schema else echo
    if t == "integer":
        return len(echo)
    if t == "number":
        return float(len(echo)) / 2
    if t == "boolean":
        return True
    return None


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return (rf.get("json_schema") or {}).get("schema") or {}
    if rf.get("type") == "json_object":
        return rf.get("schema") or {"type": "object"}
    return None


class LoopbackLLMServer:
    """aiohttp server in a background thread (own event loop). Counters are thread-safe enough
    for tests (updated only on the server loop)."""

    def __init__(
        self,
        *,
        latency: float | tuple[float, float] = 0.0,
        retry_after: float = 0.05,
        slow_s: float = 5.0,
        model: str = "loopback-echo",
        port: int = 0,
        seed: int = 0,
    ):
        self.latency, self.retry_after, self.slow_s, self.model = latency, retry_after, slow_s, model
        self.port = port
        self._rng = random.Random(seed)
        self.requests = 0  # POST /v1/chat/completions received
        self.completed = 0  # normal replies fully written
        self.faults = Counter()  # fault name -> times injected
        self.attempts: Counter[str] = Counter()  # first user message -> attempts
        self.auth_headers: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.keep_bodies = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LoopbackLLMServer":
        self._thread = threading.Thread(target=self._serve, name="loopback-llm", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("loopback server did not start")
        return self

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/stats", self._stats)
        return app

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._astart())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for t in pending:  # handlers still sleeping (slow faults): cancel quietly
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _astart(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, backlog=1024)
        await site.start()

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "LoopbackLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset_counters(self) -> None:
        self.requests = self.completed = 0
        self.faults.clear()
        self.attempts.clear()
        self.auth_headers.clear()
        self.bodies.clear()

    # -- handlers ---------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "tests"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "completed": self.completed, "faults": dict(self.faults)})

    def _fault_for(self, prompt: str, attempt: int) -> str | None:
        m = FAULT_RE.search(prompt)
        if not m:
            return None
        plan = m.group(1).split(",")
        if attempt <= len(plan):
            return plan[attempt - 1].rstrip("*")
        if plan and plan[-1].endswith("*"):
            return plan[-1].rstrip("*")
        return None

    async def _sleep_latency(self) -> None:
        lat = self.latency
        if isinstance(lat, (tuple, list)):
            lat = self._rng.uniform(*lat)
        if lat:
            await asyncio.sleep(lat)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.auth_headers.append(request.headers.get("Authorization", ""))
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"error": {"message": "bad json"}}, status=400)
        if self.keep_bodies:
            self.bodies.append(body)
        messages = body.get("messages") or []
        first = _first_user(messages)
        self.attempts[first] += 1
        fault = self._fault_for(first, self.attempts[first])
        await self._sleep_latency()
        if fault:
            self.faults[fault] += 1
        if fault == "429":
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                status=429,
                headers={"Retry-After": f"{self.retry_after:g}"},
            )
        if fault == "401":  # like OpenAI: the error message quotes the key it was given
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return web.json_response({"error": {"message": f"Incorrect API key provided: {key}"}}, status=401)
        if fault in ("500", "503", "400"):
            return web.json_response({"error": {"message": f"injected {fault}"}}, status=int(fault))
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=200, text="")
        if fault == "truncated":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Content-Length": "500"})
            await resp.prepare(request)
            await resp.write(b'{"id": "x", "choices": [{"mess')
            request.transport.abort()
            return resp
        if fault == "malformed":
            return web.Response(status=200, text='{"id": "x", "choices": [ this is not json', content_type="application/json")
        prompt = _last_user(messages)
        echo = echo_text(first)
        schema = _schema_of(body)
        if fault == "badschema":
            content = json.dumps({"unexpected": 1}) if schema is not None else "not json at all"
            if schema is not None and schema.get("type") not in (None, "object"):
                content = "not json at all"
        elif schema is not None:
            content = json.dumps(value_for(schema, echo), ensure_ascii=False)
        else:
            content = echo
        if fault == "empty":
            choices: list[dict[str, Any]] = []
        else:
            finish = "length" if fault == "length" else "stop"  # length: a reply cut off at max_tokens
            choices = [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]
        payload = {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": sum(len(str(m.get("content") or "").split()) for m in messages),
                "completion_tokens": len(content.split()),
                "total_tokens": 0,
            },
        }
        resp = web.json_response(payload)
        self.completed += 1
        return resp


class _RawProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive handler (no faults): ~10x less CPU per request than aiohttp,
    so a throughput benchmark on a small machine measures the client, not the server."""

    def __init__(self, state: dict[str, Any]):
        self.state, self.buf, self.transport = state, b"", None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def _send(self, status: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)
            )

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
            method, path = head[0].split(" ")[:2]
            st = self.state
            if method == "GET" and path == "/stats":
                self._send("200 OK", {"requests": st["requests"], "completed": st["completed"], "faults": {}})
            elif method == "GET" and path.startswith("/v1/models"):
                self._send("200 OK", {"object": "list", "data": [{"id": "loopback-echo", "object": "model"}]})
            elif method == "POST" and path.startswith("/v1/chat/completions"):
                st["requests"] += 1
                messages = json.loads(body).get("messages") or []
                content = echo_text(_first_user(messages))
                payload = {
                    "id": f"chatcmpl-{st['requests']}", "object": "chat.completion", "model": "loopback-echo",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(_first_user(messages).split()), "completion_tokens": len(content.split())},
                }
                asyncio.get_running_loop().call_later(st["latency"], self._reply, payload)
            else:
                self._send("404 Not Found", {"error": {"message": "not found"}})

    def _reply(self, payload: dict[str, Any]) -> None:
        self.state["completed"] += 1
        self._send("200 OK", payload)


async def serve_raw(port: int, latency: float) -> None:
    state = {"requests": 0, "completed": 0, "latency": latency}
    server = await asyncio.get_running_loop().create_server(lambda: _RawProtocol(state), "127.0.0.1", port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--latency-max", type=float, default=None)
    ap.add_argument("--engine", choices=["aiohttp", "raw"], default="aiohttp", help="raw: minimal HTTP, fixed latency, no faults")
    args = ap.parse_args(argv)
    if args.engine == "raw":
        try:
            asyncio.run(serve_raw(args.port, args.latency))
        except KeyboardInterrupt:
            pass
        return
    lat = (args.latency, args.latency_max) if args.latency_max else args.latency
    srv = LoopbackLLMServer(latency=lat, port=args.port)
    srv.keep_bodies = False
    srv.start()
    print(f"PORT {srv.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
