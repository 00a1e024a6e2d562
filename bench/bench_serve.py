"""Load and limits of `nac serve`, over loopback only, bounded in count and time.

    python bench/bench_serve.py --minilm out/minilm.nac --smollm2 out/smollm2.nac [--json out.json]

Starts `nac serve` in a subprocess and measures:

1. embeddings: 500 requests of one sentence each from 32 concurrent clients, against the same 500
   sent one by one: requests/s, sentences/s, p50/p99 latency, errors;
2. generation (if --smollm2): 8 concurrent streamed chats against one alone: aggregate decode
   tokens/s, time to first token p50/p99;
3. a flood: three rounds of 200 requests at once against ``--max-queue 16``: every answer is 200
   or 503 with Retry-After, the server stays up with an empty queue, and its resident memory
   settles (the first round adds the engine's plans for new batch shapes; a leak would grow
   with every round).

Absolute figures depend on the machine (printed with it). OPENBLAS_CORETYPE is left as set.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(models: list[str], *extra: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "nac.apps.cli", "serve", *models, "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def embeddings(url: str, n: int, clients: int) -> dict:
    import httpx

    sentences = [f"Sentence {i}: a man is {'eating food' if i % 3 else 'riding a horse'} in the park." for i in range(n)]
    lat, errors = [], 0
    sem = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
        async def one(text):
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                r = await c.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": text})
                lat.append(time.perf_counter() - t)
                errors += r.status_code != 200

        await one(sentences[0])  # warm up
        lat.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(s) for s in sentences))
        wall = time.perf_counter() - t0
    return {"requests": n, "clients": clients, "seconds": wall, "requests_per_s": n / wall,
            "sentences_per_s": n / wall, "p50_ms": 1e3 * _pct(lat, 0.5), "p99_ms": 1e3 * _pct(lat, 0.99),
            "errors": errors}


async def chats(url: str, streams: int, max_tokens: int) -> dict:
    import httpx

    ttft, tokens = [], 0
    async with httpx.AsyncClient(timeout=600) as c:
        async def one(i):
            nonlocal tokens
            t = time.perf_counter()
            first = None
            body = {"model": "smollm2", "stream": True, "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": f"Write a short story about a robot number {i}."}]}
            async with c.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens += chunk["usage"]["completion_tokens"]
                    elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - t
            ttft.append(first or float("nan"))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(streams)))
        wall = time.perf_counter() - t0
    return {"streams": streams, "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_ms": 1e3 * _pct(ttft, 0.5), "ttft_p99_ms": 1e3 * _pct(ttft, 0.99)}


async def flood(url: str, n: int) -> dict:
    import httpx

    codes: dict[int, int] = {}
    retry = set()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as c:
        async def one(i):
            r = await c.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": [f"flood {i} " * 40] * 8})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 503:
                retry.add(r.headers.get("Retry-After"))

        await asyncio.gather(*(one(i) for i in range(n)))
    return {"requests": n, "codes": codes, "retry_after": sorted(x for x in retry if x)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minilm", default="out/minilm.nac")
    p.add_argument("--smollm2", help="a SmolLM2 .nac (nac export smollm2) for the generation figures")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version()}}

    proc, url = start_server([args.minilm] + ([args.smollm2] if args.smollm2 else []), "--max-queue", "256",
                             "--threads", "4", "--parallel", str(args.streams))
    try:
        report["embeddings_concurrent"] = asyncio.run(embeddings(url, args.requests, args.clients))
        report["embeddings_one_by_one"] = asyncio.run(embeddings(url, args.requests, 1))
        c, o = report["embeddings_concurrent"], report["embeddings_one_by_one"]
        report["embeddings_speedup"] = c["requests_per_s"] / o["requests_per_s"]
        if args.smollm2:
            report["chat_one"] = asyncio.run(chats(url, 1, args.max_tokens))
            report["chat_concurrent"] = asyncio.run(chats(url, args.streams, args.max_tokens))
            report["chat_speedup"] = report["chat_concurrent"]["tokens_per_s"] / report["chat_one"]["tokens_per_s"]
    finally:
        proc.terminate()
        proc.wait(30)

    proc, url = start_server([args.minilm], "--max-queue", "16")
    try:
        import httpx

        for _ in range(3):  # the flood's own request shape, so its plan is part of the baseline
            httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": ["flood 0 " * 40] * 8}, timeout=60)
        base = _rss_mb(proc.pid)
        rounds = []
        for _ in range(3):  # memory must settle: a leak would grow with every round
            r = asyncio.run(flood(url, 200))
            time.sleep(2)
            r["rss_after_mb"] = _rss_mb(proc.pid)
            rounds.append(r)
        alive = httpx.get(f"{url}/health", timeout=5).json()
        report["flood"] = {"rss_baseline_mb": base, "rounds": rounds, "alive": alive["status"] == "ok",
                           "queue_after": alive["queue"]}
    finally:
        proc.terminate()
        proc.wait(30)

    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
