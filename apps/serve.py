"""`nac serve`: `.nac` models over HTTP, OpenAI-compatible, with a web page.

    nac serve out/minilm.nac out/smollm2.nac --port 8080 --api-key SECRET

Endpoints, by each file's task (a model is named by its file's stem):

- text-generation: ``POST /v1/chat/completions`` (the file's chat template, rendered sandboxed) and
  ``POST /v1/completions``; OpenAI's request and response schemas, ``stream`` as Server-Sent
  Events ending in ``data: [DONE]``;
- feature-extraction: ``POST /v1/embeddings`` (``encoding_format`` float or base64);
- text- and image-classification: ``POST /v1/classify`` (texts; images as a multipart upload or
  base64); fill-mask: ``POST /v1/fill-mask``;
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text), ``GET /`` (the page).

Concurrency: engine work runs in thread pools, never on the event loop. Embedding and
classification requests are batched dynamically (`Batcher`: up to ``batch_size`` inputs or
``batch_wait_ms`` of waiting). Up to ``parallel`` generations are in progress at once, each with
its own KV cache (`nac.Model` is thread-safe); they take turns step by step (`FairLock`), so a
new stream starts within a step of arriving instead of after the others finish. There is no
batched decode across streams yet: their aggregate speed is one stream's. At most ``max_queue`` requests are admitted (running or
waiting); beyond that the answer is 503 with ``Retry-After``. A client that disconnects stops its
generation, and every request has a deadline (``timeout``).

Safety: binds 127.0.0.1 unless told otherwise; ``api_key`` requires ``Authorization: Bearer``;
bodies above ``max_body`` bytes and prompts above the model's context are refused; every bad
request gets a 4xx JSON error in OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``) that names the problem.
"""

import asyncio
import base64
import hmac
import io
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nac.errors import NacError, NacInputError

__all__ = ["ServeConfig", "create_app", "serve", "chat_prompt", "StopFilter"]

WEB = Path(__file__).with_name("web")
ENDPOINTS = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
             "/v1/classify", "/v1/fill-mask"}
MAX_PIXELS = 40_000_000  # a decoded upload may not exceed this (a small PNG can claim a huge canvas)


@dataclass
class ServeConfig:
    """Server settings (all limits are per request unless said otherwise).

    Attributes:
        host, port: where to listen (127.0.0.1 by default: reachable from this machine only).
        api_key: when set, every ``/v1`` and ``/metrics`` request needs ``Authorization: Bearer KEY``.
        max_queue: requests admitted at once (running + waiting) before 503.
        threads: engine worker threads.
        parallel: generations in progress at once, each with its own KV cache; they take turns on
            the engine step by step (one engine call at a time per model).
        batch_size / batch_wait_ms: dynamic batching of embeddings and classification.
        max_body: request body limit in bytes (uploads included).
        max_inputs: texts or images in one request.
        max_tokens: the most tokens one completion may ask for.
        timeout: seconds a request may take before it is stopped (504).
        retry_after: seconds a 503 tells the client to wait.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_queue: int = 64
    threads: int = 4
    parallel: int = 2
    batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_body: int = 16 << 20
    max_inputs: int = 256
    max_tokens: int = 2048
    timeout: float = 300.0
    retry_after: int = 1


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------------------------
# text pieces
# ------------------------------------------------------------------------------------------------
def chat_prompt(model, messages: list[dict]) -> str:
    """The prompt text for a conversation: the file's chat template (sandboxed, as transformers
    renders it) with a generation prompt; without a template, the contents joined by newlines.

    Raises:
        NacInputError: the template rejected the conversation; NacFormatError: a broken template.
    """
    from nac.apps.chat_template import render_chat_template

    template = model.metadata.get("chat_template")
    if not template:
        return "\n".join(str(m.get("content", "")) for m in messages)
    return render_chat_template(template, messages, where=str(model.path), bos_token="", eos_token="")


class StopFilter:
    """OpenAI stop sequences over streamed text: ``feed(piece)`` returns what may be shown now
    (text that cannot be the start of a stop sequence), ``stopped`` turns True at the first stop
    sequence, which is never shown; ``flush()`` returns what was held back."""

    def __init__(self, stops: list[str]):
        self.stops, self.held, self.text, self.stopped = [s for s in stops if s], "", "", False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        buf = self.held + piece
        hits = [buf.index(s) for s in self.stops if s in buf]
        if hits:
            self.stopped, self.held = True, ""
            out = buf[:min(hits)]
            self.text += out
            return out
        keep = 0  # the longest tail of buf that begins some stop sequence
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if s.startswith(buf[-k:]):
                    keep = max(keep, k)
                    break
        out, self.held = (buf[:-keep], buf[-keep:]) if keep else (buf, "")
        self.text += out
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        self.text += out
        return out


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled | timeout


def _complete(model, ids: list[int], *, max_tokens: int, temperature: float, top_p: float, seed: int | None,
              stops: list[str], cancel: threading.Event, deadline: float, emit=None, step_lock=None) -> Completion:
    """One completion of token ids (runs in a worker thread): greedy when temperature is 0,
    else sampled; stops at EOS, a stop sequence (not shown), ``max_tokens``, ``cancel`` or the
    deadline. ``emit(text)`` receives the text as it settles; ``step_lock`` is held around each
    engine step (see `nac.apps.generate.generate`)."""
    from nac.apps.generate import TextStream, generate
    from nac.apps.tasks import text_tokenizer

    tok = text_tokenizer(model, pad=False)
    filt = StopFilter(stops)
    state = {"reason": "length", "n": 0}

    def show(piece: str) -> None:
        out = filt.feed(piece)
        if out and emit is not None:
            emit(out)

    stream = TextStream(tok, show)
    eos = set(model.generation_config.eos_token_id)

    def on_token(t) -> bool:
        state["n"] += 1
        if int(t[0]) in eos:
            state["reason"] = "stop"
            return True
        stream(t)
        if filt.stopped:
            state["reason"] = "stop"
            return True
        if cancel.is_set():
            state["reason"] = "cancelled"
            return True
        if time.monotonic() > deadline:
            state["reason"] = "timeout"
            return True
        return False

    generate(model, ids, max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature or 1.0,
             top_p=top_p, seed=seed, on_token=on_token, step_lock=step_lock)
    if state["reason"] == "length" and not filt.stopped:
        stream.end()
    tail = filt.flush()
    if tail and emit is not None:
        emit(tail)
    return Completion(filt.text, len(ids), state["n"], state["reason"])


# ------------------------------------------------------------------------------------------------
# batching, admission, metrics
# ------------------------------------------------------------------------------------------------
class Batcher:
    """Dynamic batching: requests' inputs are queued, and one engine call (``fn(list) -> list``,
    in the executor) takes up to ``size`` of them after at most ``wait_ms`` of waiting for more."""

    def __init__(self, fn, executor, size: int, wait_ms: float):
        self.fn, self.executor, self.size, self.wait = fn, executor, size, wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    async def submit(self, items: list) -> list:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((items, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            count = len(jobs[0][0])
            end = loop.time() + self.wait
            while count < self.size:
                try:
                    job = await asyncio.wait_for(self.queue.get(), max(0.0, end - loop.time()))
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                count += len(job[0])
            flat = [x for items, _ in jobs for x in items]
            try:
                results = []
                for k in range(0, len(flat), self.size):
                    results += await loop.run_in_executor(self.executor, self.fn, flat[k:k + self.size])
            except Exception as exc:  # one bad input fails its batch: retry each request alone
                if len(jobs) == 1:
                    if not jobs[0][1].done():
                        jobs[0][1].set_exception(exc)
                    continue
                for items, fut in jobs:
                    try:
                        res = await loop.run_in_executor(self.executor, self.fn, items)
                        if not fut.done():
                            fut.set_result(res)
                    except Exception as one:
                        if not fut.done():
                            fut.set_exception(one)
                continue
            k = 0
            for items, fut in jobs:
                if not fut.done():
                    fut.set_result(results[k:k + len(items)])
                k += len(items)


class Metrics:
    """The server's Prometheus metrics (its own registry, so several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("nac_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("nac_errors", "Requests answered with an error", ["endpoint", "type"],
                              registry=self.registry)
        self.queue = Gauge("nac_queue_depth", "Requests admitted and not yet answered", registry=self.registry)
        self.latency = Histogram("nac_request_seconds", "Time to answer a request", ["endpoint"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.tokens = Counter("nac_generated_tokens", "Tokens generated", ["model"], registry=self.registry)
        self.tokens_per_second = Gauge("nac_tokens_per_second", "Decode speed of the last completion", ["model"],
                                       registry=self.registry)


class Admission:
    """At most ``limit`` requests in the server at once; the next one is refused (503)."""

    def __init__(self, limit: int, retry_after: int, metrics: Metrics):
        self.limit, self.retry_after, self.metrics, self.count = limit, retry_after, metrics, 0

    def __enter__(self):
        if self.count >= self.limit:
            raise ApiError(503, f"the server is busy ({self.count} requests queued, the limit is {self.limit}); "
                                f"retry in {self.retry_after} s", type="server_busy", code="queue_full",
                           headers={"Retry-After": str(self.retry_after)})
        self.count += 1
        self.metrics.queue.set(self.count)
        return self

    def __exit__(self, *exc):
        self.release()

    def hold(self) -> None:
        """Count one more request that outlives its handler (a stream), without the limit check
        (it was admitted already)."""
        self.count += 1
        self.metrics.queue.set(self.count)

    def release(self) -> None:
        self.count -= 1
        self.metrics.queue.set(self.count)


# ------------------------------------------------------------------------------------------------
# requests (OpenAI's schemas; unknown fields are ignored as OpenAI's clients send many)
# ------------------------------------------------------------------------------------------------
def _schemas():
    from pydantic import BaseModel, ConfigDict, Field

    class Message(BaseModel):
        model_config = ConfigDict(extra="ignore")
        role: Literal["system", "user", "assistant", "developer", "tool"]
        content: str | list[dict] | None = None

        def text(self) -> str:
            if isinstance(self.content, list):  # [{"type": "text", "text": ...}, ...]
                parts = []
                for p in self.content:
                    if p.get("type") != "text" or not isinstance(p.get("text"), str):
                        raise ApiError(400, "only text content parts are supported", param="messages")
                    parts.append(p["text"])
                return "".join(parts)
            return self.content or ""

    class Sampling(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str | None = None
        max_tokens: int | None = Field(None, ge=1)
        max_completion_tokens: int | None = Field(None, ge=1)
        temperature: float = Field(1.0, ge=0, le=2)
        top_p: float = Field(1.0, gt=0, le=1)
        seed: int | None = None
        stop: str | list[str] | None = None
        n: int = Field(1, ge=1, le=8)
        stream: bool = False

    class Chat(Sampling):
        messages: list[Message] = Field(min_length=1)

    class Completions(Sampling):
        prompt: str | list[str]

    class Embeddings(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str | None = None
        input: str | list[str]
        encoding_format: Literal["float", "base64"] = "float"

    class Classify(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str | None = None
        input: str | list[str] | None = None
        image: str | list[str] | None = None  # base64
        top_k: int = Field(5, ge=1, le=1000)

    class FillMask(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str | None = None
        input: str | list[str]
        top_k: int = Field(5, ge=1, le=100)

    return Chat, Completions, Embeddings, Classify, FillMask


# ------------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------------
@dataclass
class Served:
    """One served file: its name (the file's stem), model, task, and per-model machinery."""

    name: str
    model: Any
    task: str
    batcher: Batcher | None = None
    slots: asyncio.Semaphore | None = None
    steps: Any = None  # the FairLock its generations take turns on
    created: int = field(default_factory=lambda: int(time.time()))


def _as_list(x, what: str, limit: int) -> list[str]:
    items = [x] if isinstance(x, str) else list(x)
    if not items:
        raise ApiError(400, f"'{what}' is empty", param=what)
    if len(items) > limit:
        raise ApiError(400, f"'{what}' has {len(items)} items; at most {limit} per request", param=what)
    return items


def create_app(models, config: ServeConfig | None = None):
    """The FastAPI application serving ``models`` (paths to `.nac` files, or loaded `nac.Model`s).

    Raises:
        NacError: a file cannot be loaded, two files share a name, or a task cannot be served.
    """
    import nac
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from nac.apps import tasks
    from nac.apps.generate import FairLock

    cfg = config or ServeConfig()
    executor = ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="nac-serve")
    # each running generation holds a thread for its whole length; they take turns on the engine
    # step by step (a FairLock per model), so parallel streams share the cores instead of fighting
    generation_pool = ThreadPoolExecutor(max_workers=cfg.parallel, thread_name_prefix="nac-generate")
    metrics = Metrics()
    admission = Admission(cfg.max_queue, cfg.retry_after, metrics)
    Chat, Completions, Embeddings, Classify, FillMask = _schemas()
    served: dict[str, Served] = {}
    servable = ("text-generation", "feature-extraction", "text-classification", "image-classification", "fill-mask")
    for m in models:
        model = m if isinstance(m, nac.Model) else nac.load(m)
        name = model.path.stem
        task = model.metadata.get("task")
        if name in served:
            raise NacError(f"two files are named {name!r}; rename one (a model is addressed by its file's stem)")
        if task not in servable:
            raise NacError(f"{model.path}: task {task!r} cannot be served (served: {', '.join(servable)})")
        served[name] = Served(name, model, task)

    app = FastAPI(title="NAC", version=nac.__version__, docs_url=None, redoc_url=None, openapi_url=None)

    # -- errors: every one in OpenAI's shape ----------------------------------------------------
    def error_response(exc: ApiError, endpoint: str) -> JSONResponse:
        metrics.errors.labels(endpoint if endpoint in ENDPOINTS else "other", exc.type).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        if first.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
            loc = None  # (its location is a character offset, not a field)
        else:
            msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                            for e in exc.errors()[:5])
        return error_response(ApiError(400, msg, param=loc), request.url.path)

    @app.exception_handler(NacError)
    async def _nac_error(request: Request, exc: NacError):
        return error_response(ApiError(400, str(exc)), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):  # unknown path, wrong method
        text = {404: f"no endpoint {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(ApiError(exc.status_code, text.get(exc.status_code, str(exc.detail)),
                                       code="not_found" if exc.status_code == 404 else None), request.url.path)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):  # a bug of ours, not the client's doing: logged by uvicorn
        return error_response(ApiError(500, f"internal error ({type(exc).__name__})", type="server_error"),
                              request.url.path)

    # -- the pieces every request goes through -------------------------------------------------
    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        t0 = time.perf_counter()
        try:
            if cfg.api_key and (path.startswith("/v1") or path == "/metrics"):
                auth = request.headers.get("authorization", "")
                given = auth[7:] if auth[:7].lower() == "bearer " else ""
                if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
                    raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                                   type="authentication_error", code="invalid_api_key")
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > cfg.max_body):
                raise ApiError(413, f"request body of {length} bytes is larger than the limit of {cfg.max_body}",
                               code="body_too_large")
            if length is None and request.method == "POST":
                body = b""
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > cfg.max_body:
                        raise ApiError(413, f"request body is larger than the limit of {cfg.max_body} bytes",
                                       code="body_too_large")
                request._body = body
            response = await call_next(request)
        except ApiError as exc:
            response = error_response(exc, path)
        endpoint = path if path in ENDPOINTS else "/static" if path.startswith("/static/") else "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()  # bounded labels: no series per URL
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    def pick(name: str | None, want: tuple[str, ...], endpoint: str) -> Served:
        if name is None:
            matches = [s for s in served.values() if s.task in want]
            if len(matches) == 1:
                return matches[0]
            raise ApiError(400, f"'model' is required: {endpoint} is served by "
                                f"{', '.join(s.name for s in matches) or 'no model'}", param="model")
        s = served.get(name)
        if s is None:
            raise ApiError(404, f"model {name!r} is not served here; GET /v1/models lists them", param="model",
                           code="model_not_found")
        if s.task not in want:
            raise ApiError(400, f"model {name!r} is a {s.task} model; {endpoint} needs {' or '.join(want)}",
                           param="model", code="wrong_task")
        return s

    async def in_pool(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def within(awaitable):
        try:
            return await asyncio.wait_for(awaitable, cfg.timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than {cfg.timeout:g} s", type="timeout",
                           code="timeout") from None

    def batcher(s: Served, fn) -> Batcher:
        if s.batcher is None:
            s.batcher = Batcher(fn, executor, cfg.batch_size, cfg.batch_wait_ms)
        return s.batcher

    # -- generation -------------------------------------------------------------------------------
    def prompt_ids(s: Served, text: str, param: str) -> list[int]:
        from nac.apps.tasks import text_tokenizer

        if len(text) > cfg.max_body:
            raise ApiError(400, f"'{param}' is too long", param=param)
        ids = text_tokenizer(s.model, pad=False).encode(text).ids
        ctx = int(s.model.metadata.get("max_length", 1 << 30))
        if not ids:
            raise ApiError(400, f"'{param}' encodes to no tokens", param=param)
        if len(ids) >= ctx:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; {s.name}'s context is {ctx}", param=param,
                           code="context_length_exceeded")
        return ids

    def budget(s: Served, req, ids: list[int], default: int) -> int:
        ctx = int(s.model.metadata.get("max_length", 1 << 30))
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > cfg.max_tokens:
            raise ApiError(400, f"max_tokens {asked} is above this server's limit of {cfg.max_tokens}",
                           param="max_tokens")
        room = ctx - len(ids)
        if asked is not None and asked > room:
            raise ApiError(400, f"the prompt has {len(ids)} tokens and max_tokens is {asked}: more than {s.name}'s "
                                f"context of {ctx}", param="max_tokens", code="context_length_exceeded")
        return asked if asked is not None else min(default, room, cfg.max_tokens)

    def stops_of(req) -> list[str]:
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "'stop' takes up to 4 non-empty strings", param="stop")
        return stops

    async def run_completion(s: Served, request: Request, ids, n_tokens, req, index: int, emit=None) -> Completion:
        if s.slots is None:
            s.slots = asyncio.Semaphore(cfg.parallel)
            s.steps = FairLock()
        cancel = threading.Event()
        deadline = time.monotonic() + cfg.timeout
        seed = None if req.seed is None else req.seed + index

        async def watch():
            while not cancel.is_set():
                if await request.is_disconnected():
                    cancel.set()
                    return
                await asyncio.sleep(0.1)

        def work() -> Completion:  # in a worker thread; counted there, even if the request is gone
            t0 = time.perf_counter()
            out = _complete(s.model, ids, max_tokens=n_tokens, temperature=req.temperature, top_p=req.top_p, seed=seed,
                            stops=stops_of(req), cancel=cancel, deadline=deadline, emit=emit, step_lock=s.steps)
            metrics.tokens.labels(s.name).inc(out.completion_tokens)
            elapsed = time.perf_counter() - t0
            if out.completion_tokens and elapsed > 0:
                metrics.tokens_per_second.labels(s.name).set(out.completion_tokens / elapsed)
            return out

        async with s.slots:
            watcher = asyncio.create_task(watch())
            try:
                out = await asyncio.get_running_loop().run_in_executor(generation_pool, work)
            finally:  # done, failed, or cancelled (the client went away): the thread stops at its next token
                cancel.set()
                watcher.cancel()
        if out.finish_reason == "timeout":
            raise ApiError(504, f"the completion took longer than {cfg.timeout:g} s", type="timeout", code="timeout")
        return out

    def usage(outs: list[Completion]) -> dict:
        p = outs[0].prompt_tokens if outs else 0
        c = sum(o.completion_tokens for o in outs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def finish(o: Completion) -> str:
        return "length" if o.finish_reason == "length" else "stop"

    def sse(obj) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    def stream_response(s: Served, request: Request, ids, n_tokens, req, chat: bool):
        """A Server-Sent Events response; it holds one admission until the stream ends (or the
        client goes away)."""
        admission.hold()
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                admission.release()

        cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"
        loop = asyncio.get_running_loop()

        def chunk(index: int, text: str | None, reason: str | None, first: bool = False) -> dict:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
            else:
                choice = {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
            return {"id": cid, "object": kind, "created": created, "model": s.name, "choices": [choice]}

        queue: asyncio.Queue = asyncio.Queue()  # (index, text) pieces, ("end", index, reason), ("error", body), None
        outs: list[Completion] = []

        def emit_for(index: int):
            return lambda piece: loop.call_soon_threadsafe(queue.put_nowait, (index, piece))

        async def produce() -> None:
            """Runs the n completions; releases the admission when they end, whether or not the
            client is still there (the consumer below may be cancelled at any await)."""
            try:
                for index in range(req.n):
                    out = await run_completion(s, request, ids, n_tokens, req, index, emit_for(index))
                    outs.append(out)
                    queue.put_nowait(("end", index, finish(out)))
            except ApiError as exc:
                queue.put_nowait(("error", exc.body()))
            finally:
                queue.put_nowait(None)
                release()

        async def events():
            producer = asyncio.create_task(produce())
            try:
                started = set()
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    if item[0] == "error":
                        yield sse(item[1])
                        continue
                    if item[0] == "end":
                        if chat and item[1] not in started:
                            yield sse(chunk(item[1], None, None, first=True))
                        started.add(item[1])
                        yield sse(chunk(item[1], None, item[2]))
                        continue
                    index, piece = item
                    if chat and index not in started:
                        started.add(index)
                        yield sse(chunk(index, None, None, first=True))
                    yield sse(chunk(index, piece, None))
                if outs and len(outs) == req.n:
                    yield sse({"id": cid, "object": kind, "created": created, "model": s.name, "choices": [],
                               "usage": usage(outs)})
                yield b"data: [DONE]\n\n"
            finally:
                if not producer.done():
                    producer.cancel()  # the client went away: run_completion sets its cancel flag

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def answer(s: Served, request: Request, req, ids: list[int], *, chat: bool):
        """The completion(s) of ``ids``: a stream, or the whole OpenAI response object."""
        n_tokens = budget(s, req, ids, default=256 if chat else 16)  # OpenAI's completions default is 16
        stops_of(req)
        if req.stream:
            return stream_response(s, request, ids, n_tokens, req, chat=chat)
        outs = [await run_completion(s, request, ids, n_tokens, req, i) for i in range(req.n)]
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": o.text}, "finish_reason": finish(o),
                        "logprobs": None} for i, o in enumerate(outs)]
        else:
            choices = [{"index": i, "text": o.text, "finish_reason": finish(o), "logprobs": None}
                       for i, o in enumerate(outs)]
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": s.name, "usage": usage(outs), "choices": choices}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: Chat, request: Request):
        s = pick(req.model, ("text-generation",), "/v1/chat/completions")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        with admission:
            text = await within(in_pool(chat_prompt, s.model, messages))
            ids = await within(in_pool(prompt_ids, s, text, "messages"))  # tokenising a long text: off the loop
            return await answer(s, request, req, ids, chat=True)

    @app.post("/v1/completions")
    async def completions(req: Completions, request: Request):
        s = pick(req.model, ("text-generation",), "/v1/completions")
        prompts = _as_list(req.prompt, "prompt", 1)  # one prompt per request (as llama-server)
        with admission:
            ids = await within(in_pool(prompt_ids, s, prompts[0], "prompt"))
            return await answer(s, request, req, ids, chat=False)

    # -- encoders ---------------------------------------------------------------------------------
    @app.post("/v1/embeddings")
    async def embeddings(req: Embeddings):
        s = pick(req.model, ("feature-extraction",), "/v1/embeddings")
        texts = _as_list(req.input, "input", cfg.max_inputs)
        with admission:
            tok = tasks.text_tokenizer(s.model)
            counts = await within(in_pool(lambda: [int(sum(e.attention_mask)) for e in tok.encode_batch(texts)]))
            vectors = await within(batcher(s, lambda xs: list(tasks.embed_sentences(s.model, xs))).submit(texts))
        data = []
        for i, v in enumerate(vectors):
            v = np.asarray(v, np.float32)
            emb = base64.b64encode(v.tobytes()).decode() if req.encoding_format == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": s.name,
                "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}

    def decode_images(blobs: list[bytes], s: Served) -> np.ndarray:
        from PIL import Image

        arrays = []
        for k, b in enumerate(blobs):
            if not b:
                raise ApiError(400, f"image {k} is empty", param="image")
            try:
                with Image.open(io.BytesIO(b)) as im:  # reads the header only
                    w, h = im.size
            except Exception:
                raise ApiError(400, f"image {k}: not an image Pillow can decode", param="image") from None
            if w * h > MAX_PIXELS:
                raise ApiError(400, f"image {k} is {w}x{h} pixels; at most {MAX_PIXELS:,} are accepted", param="image")
            try:
                arrays.append(tasks.load_image(io.BytesIO(b), s.model.metadata["preprocess"]))
            except NacInputError as exc:
                raise ApiError(400, f"image {k}: {str(exc).split(': ', 1)[-1]}", param="image") from None
        return np.stack(arrays)

    @app.post("/v1/classify")
    async def classify(request: Request):
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=cfg.max_inputs, max_fields=16)
            except Exception as exc:  # a malformed multipart body
                raise ApiError(400, f"malformed multipart body ({type(exc).__name__})") from None
            uploads = [v for k, v in form.multi_items() if hasattr(v, "read")]
            blobs = [await u.read() for u in uploads]
            name = form.get("model") if isinstance(form.get("model"), str) else None
            try:
                top_k = int(form.get("top_k", 5)) if isinstance(form.get("top_k", 5), (str, int)) else 5
            except ValueError:
                raise ApiError(400, "'top_k' must be an integer", param="top_k") from None
            s = pick(name, ("image-classification",), "/v1/classify (multipart)")
            if not blobs:
                raise ApiError(400, "no image uploaded (send files in a multipart form)", param="file")
            texts = None
        else:
            try:
                body = json.loads(await request.body())
                req = Classify.model_validate(body)
            except ValueError as exc:
                raise ApiError(400, f"the body is not a valid classify request ({str(exc).splitlines()[0][:200]})")
            s = pick(req.model, ("text-classification", "image-classification"), "/v1/classify")
            top_k = req.top_k
            if s.task == "image-classification":
                if req.image is None:
                    raise ApiError(400, "'image' (base64) is required for an image classifier", param="image")
                try:
                    blobs = [base64.b64decode(x, validate=True) for x in _as_list(req.image, "image", cfg.max_inputs)]
                except ValueError:
                    raise ApiError(400, "'image' is not valid base64", param="image") from None
                texts = None
            else:
                if req.input is None:
                    raise ApiError(400, "'input' (text) is required for a text classifier", param="input")
                texts = _as_list(req.input, "input", cfg.max_inputs)
        if len(blobs if texts is None else texts) > cfg.max_inputs:
            raise ApiError(400, f"at most {cfg.max_inputs} inputs per request", param="input")
        with admission:
            if texts is not None:
                labels = await within(batcher(s, lambda xs: tasks.classify_texts(s.model, xs)).submit(texts))
                data = [{"index": i, "labels": [vars(x) for x in r[:top_k]]} for i, r in enumerate(labels)]
            else:
                pixels = await within(in_pool(decode_images, blobs, s))
                preds = await within(batcher(s, lambda xs: tasks.classify_pixels(s.model, np.stack(xs), 1000)).submit(
                    list(pixels)))
                data = [{"index": i, "labels": [{"label": p.label, "score": p.probability, "class": p.index}
                                                for p in r[:top_k]]} for i, r in enumerate(preds)]
        return {"object": "list", "model": s.name, "data": data}

    @app.post("/v1/fill-mask")
    async def fill_mask(req: FillMask):
        s = pick(req.model, ("fill-mask",), "/v1/fill-mask")
        texts = _as_list(req.input, "input", cfg.max_inputs)
        with admission:
            results = await within(in_pool(tasks.fill_mask, s.model, texts, req.top_k))
        return {"object": "list", "model": s.name,
                "data": [{"index": i, "masks": [[vars(f) for f in m] for m in r]} for i, r in enumerate(results)]}

    # -- the rest -------------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": s.name, "object": "model", "created": s.created, "owned_by": "nac",
                                            "task": s.task} for s in served.values()]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(served), "queue": admission.count}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def page():
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        files = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in files:
            raise ApiError(404, f"no static file {name!r}", code="not_found")
        return FileResponse(WEB / name, media_type=files[name])

    app.state.served, app.state.admission, app.state.metrics, app.state.config = served, admission, metrics, cfg
    return app


def serve(models, config: ServeConfig | None = None) -> None:
    """Load ``models`` and serve them with uvicorn until interrupted (`create_app` raises)."""
    import uvicorn

    cfg = config or ServeConfig()
    app = create_app(models, cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=5)
