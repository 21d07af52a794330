"""A client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, ...).

`OpenAIClient.generate(requests)` satisfies `operators.llm.LLMClient`:

- results pass through the generation cache: hits make no request; each success is committed
  as it arrives; errors are never cached (a re-run retries only failed rows);
- the cache identity is real: for a managed server, the server's (GGUF hash, context size, chat
  template, server arguments); for an external endpoint, its base URL, the model id it reports
  at `GET /models` and an optional user-set `revision`;
- a reply cut off at `max_tokens` (finish_reason "length") is a `truncated` row error, not a
  cached success, unless `accept_truncated=True`;
- `timeout_s` bounds one attempt, `row_deadline_s` a row's attempts and backoff together, so one
  slow endpoint cannot stall a stage for tens of minutes;
- identical requests in one batch (same cache key) are sent once and fanned out;
- bounded concurrency (a semaphore), per-request timeout, retries with exponential backoff and
  full jitter on 429 / 5xx / timeouts / connection errors / malformed bodies, honouring
  `Retry-After`, capped per request (`max_retries`) and per batch (`retry_budget`);
- structured output: with a schema, `response_format` json_schema (or llama.cpp's json_object +
  schema, or a prompt instruction), parse + validate with `jsonschema`, one repair turn on
  failure, then the row's error is `schema`;
- the API key never reaches logs, exceptions, result details, metadata or the cache.

Transports: `"openai"` (default) uses `openai.AsyncOpenAI(max_retries=0)` so the retry budget is
ours; `"aiohttp"` is a lean path for high request rates against local servers (the openai
package spends ~1 ms of CPU per request building it, which dominates at >500 req/s).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import hashlib
import json
import logging
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from operators.llm import ERROR_KINDS, LLMRequest, LLMResult

from .cache import cache_key, open_cache

log = logging.getLogger("resources.llm")

RETRYABLE = frozenset({"rate_limited", "server_error", "timeout", "connection", "bad_response"})
SCHEMA_MODES = ("json_schema", "json_object", "prompt")

REPAIR_PROMPT = (
    "Your previous reply was not valid for the required JSON schema ({problem}). "
    "Reply again with only a JSON value that validates against this schema, no prose, no code fences:\n{schema}"
)
SCHEMA_INSTRUCTION = "Reply with only a JSON value (no prose, no code fences) that validates against this JSON schema:\n{schema}"


class CallError(Exception):
    """One failed attempt, classified into an `ERROR_KINDS` kind (message already redacted)."""

    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        assert kind in ERROR_KINDS, kind
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.retry_after = kind, detail, retry_after


# --------------------------------------------------------------------------- redaction


class Redactor:
    """Removes a secret (and anything that looks like a bearer token / OpenAI key) from text."""

    _PATTERNS = (re.compile(r"(?i)(bearer\s+)[^\s'\",]+"), re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"))

    def __init__(self, *secrets: str | None):
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def __call__(self, text: Any) -> str:
        out = str(text)
        for s in self.secrets:
            out = out.replace(s, "***")
        out = self._PATTERNS[0].sub(r"\1***", out)
        return self._PATTERNS[1].sub("sk-***", out)


# --------------------------------------------------------------------------- counters


@dataclass
class ClientStats:
    """Cumulative counters for one client (thread-safe). `to_dict()` is what the asset layer reads."""

    price_in_per_mtok: float = 0.0
    price_out_per_mtok: float = 0.0
    requests: int = 0  # rows asked of generate()
    cache_hits: int = 0
    generations: int = 0  # distinct prompts sent (after cache and in-batch dedup)
    http_requests: int = 0  # HTTP attempts, retries and repair turns included
    retries: int = 0
    repairs: int = 0
    errors: Counter = field(default_factory=Counter)
    tokens_in: int = 0
    tokens_out: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.errors[kind] += n

    @property
    def est_cost_usd(self) -> float:
        return (self.tokens_in * self.price_in_per_mtok + self.tokens_out * self.price_out_per_mtok) / 1e6

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "cache_hits": self.cache_hits,
                "generations": self.generations,
                "http_requests": self.http_requests,
                "retries": self.retries,
                "repairs": self.repairs,
                "errors": dict(self.errors),
                "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out,
                "est_cost_usd": round(self.est_cost_usd, 6),
            }


# --------------------------------------------------------------------------- helpers


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    ms = headers.get("retry-after-ms") or headers.get("Retry-After-Ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    val = headers.get("retry-after") or headers.get("Retry-After")
    if not val:
        return None
    try:
        return max(0.0, float(val))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(val)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def status_kind(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status >= 500 or status == 409:
        return "server_error"
    return "client_error"


def extract_json(text: str) -> Any:
    """json.loads, tolerating code fences and prose around one JSON object/array."""
    s = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", s, re.S)
    if fence:
        s = fence.group(1)
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        for open_, close in (("{", "}"), ("[", "]")):
            i, j = s.find(open_), s.rfind(close)
            if 0 <= i < j:
                try:
                    return json.loads(s[i : j + 1])
                except json.JSONDecodeError:
                    continue
        raise


_VALIDATORS: dict[str, Any] = {}


def validate(schema: Mapping[str, Any], value: Any) -> str | None:
    """None when valid, else a short description of the first problem."""
    import jsonschema

    skey = json.dumps(schema, sort_keys=True)
    validator = _VALIDATORS.get(skey)
    if validator is None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validator = _VALIDATORS[skey] = cls(schema)
    err = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if err is None:
        return None
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    return f"at {where}: {err.message[:200]}"


def run_sync(make_coro: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code: directly when no loop runs in this thread,
    else on a private thread with its own loop (so callers inside Jupyter / async code work)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_interruptibly(make_coro) if threading.current_thread() is threading.main_thread() else asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm-generate") as ex:
        return ex.submit(lambda: asyncio.run(make_coro())).result()


def _run_interruptibly(make_coro: Callable[[], Any]) -> Any:
    """`asyncio.run` where SIGINT/SIGTERM stop the batch, then act as the handler in place would. Inside
    a Dagster step that handler raises DagsterExecutionInterruptedError, which asyncio's callback error
    handler swallows when raised inside the loop (it is no KeyboardInterrupt), so without this a
    SIGTERM'd stage ran on to the end. Answers already received stay in the cache."""
    import signal

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupted: list[int] = []

    async def main() -> Any:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        for s in previous:
            loop.add_signal_handler(s, lambda s=s: (interrupted.append(s), task.cancel()))
        return await make_coro()

    try:
        result = asyncio.run(main())
    except asyncio.CancelledError:
        if not interrupted:
            raise
        result = None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    if interrupted:  # what the previous handler does: Dagster's raises its interruption (no op retry)
        sig, handler = interrupted[0], previous[interrupted[0]]
        if callable(handler):
            handler(sig, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(sig)
        raise KeyboardInterrupt(f"signal {sig} during an LLM batch")
    return result


class _Budget:
    def __init__(self, total: int | None):
        self.left = total

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


# --------------------------------------------------------------------------- transports


class _OpenAITransport:
    """HTTP through `openai.AsyncOpenAI` (its own retries off). Uses `client.post` with the raw
    response so the JSON is ours to check (a malformed body is `bad_response`, not a crash)."""

    def __init__(self, owner: "OpenAIClient"):
        import httpx2 as httpx  # the openai package's HTTP library in this environment
        import openai

        self.openai, self.httpx, self.red = openai, httpx, owner._redact
        limits = httpx.Limits(max_connections=owner.max_concurrency, max_keepalive_connections=owner.max_concurrency)
        try:  # the SDK's own aiohttp backend (openai[aiohttp]): about half the CPU per request of httpx
            http_client = openai.DefaultAioHttpClient(limits=limits, timeout=owner.timeout_s)
        except (AttributeError, RuntimeError, ImportError, TypeError):
            http_client = openai.DefaultAsyncHttpxClient(limits=limits, timeout=owner.timeout_s)
        self.client = openai.AsyncOpenAI(
            api_key=owner._api_key or "EMPTY",
            base_url=owner._resolved_base_url,
            max_retries=0,
            timeout=owner.timeout_s,
            http_client=http_client,
            default_headers=owner.headers or None,
        )

    async def post(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        o = self.openai
        try:
            resp = await self.client.post("/chat/completions", body=body, cast_to=self.httpx.Response, options={"timeout": timeout})
        except o.APIStatusError as err:
            headers = dict(err.response.headers) if getattr(err, "response", None) is not None else {}
            raise CallError(status_kind(err.status_code), self.red(f"HTTP {err.status_code}: {err.message}"[:500]), parse_retry_after(headers)) from None
        except o.APITimeoutError as err:
            cause = err.__cause__ or err.__context__
            if isinstance(cause, self.httpx.ConnectTimeout):  # could not connect (the aiohttp backend maps refusals here)
                raise CallError("connection", self.red(f"cannot connect: {cause}"[:300])) from None
            raise CallError("timeout", f"no reply within {timeout:g}s") from None
        except o.APIConnectionError as err:
            cause = err.__cause__ or err.__context__
            raise CallError("connection", self.red(f"{type(cause or err).__name__}: {cause or err}"[:300])) from None
        except (o.APIResponseValidationError, json.JSONDecodeError, ValueError) as err:
            raise CallError("bad_response", self.red(f"{type(err).__name__}: {err}"[:300])) from None
        try:
            return json.loads(resp.content)
        except (ValueError, UnicodeDecodeError) as err:
            raise CallError("bad_response", f"body is not JSON: {err}"[:300]) from None

    async def aclose(self) -> None:
        await self.client.close()


class _AiohttpTransport:
    """A lean HTTP path (aiohttp) for OpenAI-compatible servers: same classification, ~5x less CPU."""

    def __init__(self, owner: "OpenAIClient"):
        import aiohttp

        self.aiohttp, self.red = aiohttp, owner._redact
        self.url = owner._resolved_base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json", **(owner.headers or {})}
        if owner._api_key:
            self.headers["Authorization"] = f"Bearer {owner._api_key}"
        self._timeout_s, self._timeout = owner.timeout_s, aiohttp.ClientTimeout(total=owner.timeout_s)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=owner.max_concurrency, ssl=None if self.url.startswith("https:") else False),
            headers=self.headers,
        )

    async def post(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        a = self.aiohttp
        try:
            if timeout != self._timeout_s:
                self._timeout_s, self._timeout = timeout, a.ClientTimeout(total=timeout)
            async with self.session.post(self.url, data=json.dumps(body), timeout=self._timeout) as r:
                raw = await r.read()
                if r.status >= 400:
                    msg = raw[:300].decode("utf-8", "replace")
                    raise CallError(status_kind(r.status), self.red(f"HTTP {r.status}: {msg}"), parse_retry_after(r.headers))
        except CallError:
            raise
        except asyncio.TimeoutError:
            raise CallError("timeout", f"no reply within {timeout:g}s") from None
        except (a.ClientError, OSError) as err:
            raise CallError("connection", self.red(f"{type(err).__name__}: {err}"[:300])) from None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise CallError("bad_response", f"body is not JSON: {err}"[:300]) from None

    async def aclose(self) -> None:
        await self.session.close()


TRANSPORTS = {"openai": _OpenAITransport, "aiohttp": _AiohttpTransport}


# --------------------------------------------------------------------------- the client


class OpenAIClient:
    """`LLMClient` for an OpenAI-compatible endpoint. `model` is the identity used in cache keys.

    Parameters (all keyword):
      base_url, model: the endpoint and the model name sent in requests;
      identity: the cache identity, used verbatim when given; by default it is derived from
        the managed server (`server.identity`) or, for an external endpoint, from `label`, the
        base URL, the model id the endpoint reports at `GET /models` and `revision`;
      revision: an optional user-set model revision for an external endpoint (bump it when the
        weights behind the same model id change);
      label: the model name shown in results and metadata (default `openai:<model>`);
      api_key: sent as a bearer token, never logged or stored;
      max_concurrency, timeout_s (per attempt), max_retries (per request), retry_budget (total
        retries per `generate()` call; None = 16 + number of distinct prompts), row_deadline_s
        (all attempts and backoff of one row; None = no deadline);
      accept_truncated: keep replies cut off at max_tokens (finish_reason "length") as
        successes (cached); default False: such a row gets the `truncated` error;
      extra_body: fields merged into every request body (part of the cache key);
      backoff_s / backoff_max_s (exponential backoff with full jitter), max_retry_after_s
        (cap on a server's Retry-After);
      schema_mode: "json_schema" | "json_object" (llama.cpp: json_object + schema) | "prompt";
      repair: one repair turn when a reply fails the schema;
      cache: a GenerationCache, a path, None (= `$DATAFLOW_HOME/cache/llm.sqlite`) or False;
      prices: (USD per 1M input tokens, per 1M output tokens) for `stats()["est_cost_usd"]`;
      transport: "openai" (AsyncOpenAI) | "aiohttp"; server: a managed server started on the
        first request that misses the cache (its base_url is used).
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str = "default",
        identity: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 16,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        retry_budget: int | None = None,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 60.0,
        schema_mode: str = "json_schema",
        repair: bool = True,
        cache: Any = None,
        home: str | None = None,
        prices: tuple[float, float] = (0.0, 0.0),
        transport: str = "openai",
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        server: Any = None,
        revision: str | None = None,
        label: str | None = None,
        row_deadline_s: float | None = None,
        accept_truncated: bool = False,
    ):
        if schema_mode not in SCHEMA_MODES:
            raise ValueError(f"schema_mode must be one of {SCHEMA_MODES}, got {schema_mode!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}, got {transport!r}")
        if base_url is None and server is None:
            raise ValueError("OpenAIClient needs base_url= (or a managed server=)")
        self.base_url = base_url.rstrip("/") if base_url else base_url
        self.request_model = model
        self.model = label or identity or getattr(server, "identity", None) or f"openai:{model}"
        self.revision = revision
        self._identity: str | None = identity or getattr(server, "identity", None)
        if self._identity is None and server is not None:  # a managed server without a model identity: its command
            port = str(getattr(server, "port", None))
            cmd = [c for c in (getattr(server, "cmd_template", None) or getattr(server, "cmd", [])) if c != port]
            self._identity = f"{self.model}:{getattr(server, 'name', 'server')}:{hashlib.sha256(json.dumps(cmd).encode()).hexdigest()[:12]}"
        self._identity_lock = threading.Lock()
        self.row_deadline_s = float(row_deadline_s) if row_deadline_s else None
        self.accept_truncated = bool(accept_truncated)
        self._api_key = api_key or None
        self._redact = Redactor(api_key)
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.retry_budget = retry_budget
        self.backoff_s, self.backoff_max_s, self.max_retry_after_s = backoff_s, backoff_max_s, max_retry_after_s
        self.schema_mode, self.repair = schema_mode, repair
        self.cache = open_cache(cache, home)
        self.transport = transport
        self.headers = dict(headers or {})
        self.extra_body = dict(extra_body or {})
        self.server = server
        self.stats_ = ClientStats(price_in_per_mtok=prices[0], price_out_per_mtok=prices[1])
        self._rng = random.Random()

    # -- identity / display --------------------------------------------------------------------
    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, api_key={'***' if self._api_key else None})"

    def stats(self) -> dict[str, Any]:
        return self.stats_.to_dict()

    @property
    def identity(self) -> str:
        """The model identity in cache keys (resolved once; for an external endpoint this asks
        `GET /models`, and is retried on the next call while the endpoint does not answer)."""
        if self._identity is not None:
            return self._identity
        with self._identity_lock:
            if self._identity is not None:
                return self._identity
            reported = self._reported_model()
            ident = f"{self.model}@{self.base_url}#{reported or '?'}" + (f"@rev={self.revision}" if self.revision else "")
            if reported is not None:
                self._identity = ident
            return ident

    def _reported_model(self) -> str | None:
        """The model id the endpoint reports: the requested one when listed, the only one when a
        single model is served (llama.cpp, a vLLM replica), else `unlisted:<model>`; None when
        the endpoint does not answer (the identity is then not memoized)."""
        req = urllib.request.Request(f"{self.base_url}/models", headers={**self.headers, **({"Authorization": f"Bearer {self._api_key}"} if self._api_key else {})})
        try:
            with urllib.request.urlopen(req, timeout=min(self.timeout_s, 10.0)) as resp:
                data = json.loads(resp.read())
            ids = [str(m.get("id")) for m in (data.get("data") or []) if isinstance(m, dict) and m.get("id")]
        except urllib.error.HTTPError as err:  # answers, but lists nothing: a stable, explicit marker
            return f"unlisted:{self.request_model}:http{err.code}"
        except (urllib.error.URLError, OSError, ValueError, AttributeError) as err:
            log.warning("llm %s: cannot read %s/models (%s); cache identity not pinned yet", self.model, self.base_url, self._redact(err))
            return None
        if self.request_model in ids:
            return self.request_model
        if len(ids) == 1:
            return ids[0]
        return f"unlisted:{self.request_model}"

    def key_for(self, request: LLMRequest) -> str:
        return cache_key(self.identity, request, mode=self.schema_mode, extra_body=self.extra_body)

    @property
    def _resolved_base_url(self) -> str:
        if self.server is not None:
            return self.server.base_url
        return self.base_url

    # -- public API ----------------------------------------------------------------------------
    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        """One `LLMResult` per request, in request order (match by `id`/`sample`, not position)."""
        reqs = list(requests)
        return run_sync(lambda: self.agenerate(reqs))

    async def agenerate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        reqs = list(requests)
        if not reqs:
            return []
        ident = self._identity if self._identity is not None else await asyncio.to_thread(lambda: self.identity)
        mode, extra = self.schema_mode, self.extra_body
        keys = [cache_key(ident, r, mode=mode, extra_body=extra) for r in reqs]
        hits = self.cache.lookup(reqs, keys) if self.cache is not None else {}
        out: list[LLMResult | None] = [hits.get(i) for i in range(len(reqs))]
        groups: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if i not in hits:
                groups.setdefault(k, []).append(i)
        self.stats_.add(requests=len(reqs), cache_hits=len(hits), generations=len(groups))
        if groups:
            if self.server is not None and not getattr(self.server, "running", True):
                await asyncio.to_thread(self.server.start)
            transport = TRANSPORTS[self.transport](self)
            budget = _Budget(self.retry_budget if self.retry_budget is not None else 16 + len(groups))
            sem = asyncio.Semaphore(self.max_concurrency)

            loop = asyncio.get_running_loop()
            pending: list[LLMResult] = []

            def flush() -> None:
                # Results that completed in the same loop tick are committed together, before the
                # loop waits on I/O again: durable as they arrive, without one commit per row.
                # Cost O(rows flushed): only this batch's prompts are looked up.
                batch = pending[:]
                pending.clear()
                try:
                    self.cache.put_many(batch, prompts={r.cache_key: reqs[groups[r.cache_key][0]].messages for r in batch})
                except Exception as err:  # a cache failure must not lose the answers
                    log.warning("llm cache write failed: %s", self._redact(err))

            async def one(key: str, idx: list[int]) -> None:
                res = await self._generate_one(transport, sem, budget, reqs[idx[0]], key)
                if res.ok and self.cache is not None:
                    if not pending:
                        loop.call_soon(flush)
                    pending.append(res)
                for j in idx:
                    r = reqs[j]
                    out[j] = res if j == idx[0] else LLMResult(**{**res.__dict__, "id": r.id, "sample": r.sample})

            todo = iter(groups.items())

            async def worker() -> None:
                # a bounded pool of workers rather than one task per prompt (100k tasks cost memory
                # and scheduling); twice the HTTP concurrency so rows sleeping in backoff do not
                # idle the connection slots (the semaphore bounds requests in flight)
                for k, idx in todo:
                    await one(k, idx)

            try:
                await asyncio.gather(*(worker() for _ in range(min(len(groups), 2 * self.max_concurrency))))
            finally:
                if pending:
                    flush()
                await transport.aclose()
            failed = Counter(r.error for r in out if r is not None and r.error)
            if failed:
                log.warning("llm %s: %d of %d rows failed %s", self.model, sum(failed.values()), len(reqs), dict(failed))
        return out  # type: ignore[return-value]

    # -- one prompt ----------------------------------------------------------------------------
    def _body(self, messages: list[dict[str, Any]], req: LLMRequest) -> dict[str, Any]:
        p = req.params
        body: dict[str, Any] = {
            "model": self.request_model,
            "messages": messages,
            "temperature": p.temperature,
            "max_tokens": p.max_tokens,
            "top_p": p.top_p,
            "seed": p.seed + req.sample,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        for name in ("top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"):
            value = getattr(p, name)
            if value is not None:
                body[name] = value
        if req.tools:
            body["tools"] = [dict(t) for t in req.tools]
        if req.tool_choice is not None:
            body["tool_choice"] = req.tool_choice
        if req.schema is not None:
            if self.schema_mode == "json_schema":
                body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": dict(req.schema)}}
            elif self.schema_mode == "json_object":
                body["response_format"] = {"type": "json_object", "schema": dict(req.schema)}
        elif req.response_format:
            body["response_format"] = dict(req.response_format)
        body.update(self.extra_body)
        if req.extra_body:
            body.update(req.extra_body)
        return body

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s) + self._rng.uniform(0, 0.05)
        cap = min(self.backoff_max_s, self.backoff_s * (2 ** (attempt - 1)))
        return self._rng.uniform(cap / 2, cap)  # "equal jitter": never zero, never above the cap

    async def _generate_one(self, transport, sem: asyncio.Semaphore, budget: _Budget, req: LLMRequest, key: str) -> LLMResult:
        t0 = time.perf_counter()
        messages = [dict(m) for m in req.messages]
        schema_text = json.dumps(req.schema, ensure_ascii=False) if req.schema is not None else ""
        if req.schema is not None and self.schema_mode == "prompt":
            messages = [{"role": "system", "content": SCHEMA_INSTRUCTION.format(schema=schema_text)}, *messages]
        tokens_in = tokens_out = 0
        retries = 0
        repaired = False
        res = LLMResult(id=req.id, sample=req.sample, model=self.model, cache_key=key)
        deadline = t0 + self.row_deadline_s if self.row_deadline_s else None
        while True:
            try:
                async with sem:
                    timeout = self.timeout_s
                    if deadline is not None:
                        timeout = min(timeout, deadline - time.perf_counter())
                        if timeout <= 0:
                            raise CallError("timeout", f"row deadline of {self.row_deadline_s:g}s passed before an answer")
                    self.stats_.add(http_requests=1)
                    data = await transport.post(self._body(messages, req), timeout)
                try:
                    usage = data.get("usage") or {}
                    tokens_in += int(usage.get("prompt_tokens") or 0)
                    tokens_out += int(usage.get("completion_tokens") or 0)
                    choices = data.get("choices")
                    if not choices or not isinstance(choices, list):
                        raise CallError("bad_response", "reply has no choices")
                    choice = choices[0]
                    content = (choice.get("message") or {}).get("content")
                except (AttributeError, TypeError, ValueError) as err:
                    raise CallError("bad_response", f"unexpected reply shape: {type(err).__name__}") from None
                if content is None:
                    raise CallError("bad_response", "reply has no message content")
            except CallError as err:
                delay = self._backoff(retries + 1, err.retry_after)
                past_deadline = deadline is not None and time.perf_counter() + delay >= deadline
                if past_deadline and err.kind in RETRYABLE:
                    err = CallError(err.kind, f"{err.detail}; row deadline of {self.row_deadline_s:g}s leaves no time for a retry")
                if err.kind in RETRYABLE and not past_deadline and retries < self.max_retries and budget.take():
                    retries += 1
                    log.info("llm retry %d/%d for %s after %s (sleep %.2fs)", retries, self.max_retries, req.id, err.kind, delay)
                    self.stats_.add(retries=1)
                    await asyncio.sleep(delay)
                    continue
                res.error, res.error_detail = err.kind, self._redact(err.detail)
                break
            except Exception as err:  # noqa: BLE001 - a failed row never fails the batch
                res.error, res.error_detail = "client_error", self._redact(f"{type(err).__name__}: {err}")[:500]
                break
            res.text, res.finish_reason = str(content), choice.get("finish_reason")
            if res.finish_reason == "length" and not self.accept_truncated:
                res.error = "truncated"
                res.error_detail = f"reply cut off at max_tokens={req.params.max_tokens} (finish_reason 'length'); raise max_tokens or accept truncated replies"
                break
            if req.schema is None:
                break
            try:
                value = extract_json(res.text)
                problem = validate(req.schema, value)
            except (json.JSONDecodeError, ValueError) as err:
                value, problem = None, f"not JSON: {err}"[:200]
            if problem is None:
                res.parsed = value
                break
            if self.repair and not repaired:
                repaired = True
                self.stats_.add(repairs=1)
                messages = [
                    *messages,
                    {"role": "assistant", "content": res.text},
                    {"role": "user", "content": REPAIR_PROMPT.format(problem=problem, schema=schema_text)},
                ]
                continue
            res.error, res.error_detail = "schema", problem
            break
        res.tokens_in, res.tokens_out = tokens_in, tokens_out
        res.latency_s = time.perf_counter() - t0
        self.stats_.add(tokens_in=tokens_in, tokens_out=tokens_out)
        if res.error:
            self.stats_.error(res.error)
        return res

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> "OpenAIClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
