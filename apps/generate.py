"""Text generation with a KV cache on a `text-generation` `.nac` (exported by
`nac.apps.sources.causal_lm`). Nothing here imports torch.

The graph runs one step: prefill (the prompt, no past) or decode (one token). The engine keeps
the KV cache: a preallocated buffer of capacity prompt + max_new_tokens - 1 per layer, passed
whole to every decode step with its unused slots masked out, so all decode steps share one
shape and one memory plan.

Logits are processed as transformers' ``generate`` does, in its order: repetition penalty
(CTRL, Keskar et al. 2019), then for sampling temperature, top-k, top-p (Holtzman et al. 2020).
Sampling uses numpy's PCG64 generator: reproducible for a seed, but not torch's random stream.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Sequence

import numpy as np

from nac.engine import Model
from nac.errors import NacError, NacInputError


def _left_pad(input_ids, pad: int) -> tuple[np.ndarray, np.ndarray]:
    if len(input_ids) == 0:
        raise NacInputError("empty prompt: give at least one token")
    if isinstance(input_ids, np.ndarray) and input_ids.ndim == 2:
        rows = [list(r) for r in input_ids]
    elif isinstance(input_ids, np.ndarray) and input_ids.ndim == 1:
        rows = [list(input_ids)]
    elif isinstance(input_ids, Sequence) and input_ids and all(isinstance(t, (int, np.integer)) for t in input_ids):
        rows = [list(input_ids)]
    elif isinstance(input_ids, Sequence) and input_ids and all(isinstance(r, (Sequence, np.ndarray)) for r in input_ids):
        rows = [list(r) for r in input_ids]
    else:
        raise NacInputError("input_ids must be a list of token ids, a list of such lists, or a 1-D/2-D integer array")
    if any(len(r) == 0 for r in rows):
        raise NacInputError("empty prompt: give at least one token")
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = r
        mask[b, width - len(r):] = 1
    return ids, mask


def process_logits(scores: np.ndarray, seqs: np.ndarray, *, do_sample: bool, temperature: float, top_k: int,
                   top_p: float, repetition_penalty: float) -> np.ndarray:
    """transformers' logits processors/warpers on [B, V] float64 scores (returns a new array)."""
    s = scores.astype(np.float64, copy=True)
    if repetition_penalty != 1.0:
        for b in range(s.shape[0]):
            idx = np.unique(seqs[b])
            v = s[b, idx]
            s[b, idx] = np.where(v < 0, v * repetition_penalty, v / repetition_penalty)
    if not do_sample:
        return s
    if temperature != 1.0:
        s /= temperature
    if top_k and top_k < s.shape[1]:
        kth = np.sort(s, axis=1)[:, -top_k][:, None]
        s[s < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(s, axis=1, kind="stable")  # ascending, as transformers' TopPLogitsWarper
        sorted_s = np.take_along_axis(s, order, axis=1)
        probs = np.exp(sorted_s - sorted_s.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        remove = np.cumsum(probs, axis=1) <= (1 - top_p)
        remove[:, -1] = False  # keep at least one token
        np.put_along_axis(s, order, np.where(remove, -np.inf, sorted_s), axis=1)
    return s


def generate(model: Model, input_ids, *, max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
             eos_token_id=None, pad_token_id: int | None = None,
             on_token: Callable[[np.ndarray], bool | None] | None = None, return_logits: bool = False,
             step_lock=None):
    """Generate continuations of token-id prompts, returning full sequences like transformers.

    Args:
        model: a loaded `text-generation` model.
        input_ids: one prompt (list of ids or 1-D array) or a batch (list of lists, or [B, T]);
            prompts of different lengths are left-padded.
        max_new_tokens: tokens to add at most.
        do_sample / temperature / top_k / top_p / repetition_penalty: as transformers.
        seed: seed for sampling (numpy PCG64).
        eos_token_id: int or list; default from the file. A sequence that emits one stops and is
            filled with ``pad_token_id`` (default: the file's, else the first EOS id).
        on_token: called with the [B] new token ids after each step; returning ``True`` stops early.
        return_logits: also return the [steps, B, V] float32 logits of each step.
        step_lock: a context manager held around each engine step (the prefill, each decode
            step): generations that share one (a server's, `FairLock`) take turns step by step
            instead of all running at once on the same cores.
    Returns:
        int64 [B, T + n] sequences (n <= max_new_tokens), plus the logits if asked.
    Raises:
        NacError: the model is not a text-generation model.
        NacInputError: an empty prompt, prompt + new tokens beyond the model's context, or an invalid
            setting (temperature <= 0 when sampling, top_p outside (0, 1], negative top_k, ...).
    """
    meta = model.metadata
    if meta.get("task") != "text-generation":
        raise NacError(f"{model.path.name} is a {meta.get('task', 'generic')} model, not text-generation")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise NacInputError(f"max_new_tokens must be a non-negative integer, not {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise NacInputError(f"temperature must be > 0 when sampling, not {temperature!r}")
    if not 0 < top_p <= 1:
        raise NacInputError(f"top_p must be in (0, 1], not {top_p!r}")
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise NacInputError(f"top_k must be a non-negative integer, not {top_k!r}")
    if not repetition_penalty > 0:
        raise NacInputError(f"repetition_penalty must be > 0, not {repetition_penalty!r}")
    eos = meta.get("eos_token_id") if eos_token_id is None else eos_token_id
    eos = [eos] if isinstance(eos, (int, np.integer)) else list(eos or [])
    pad = pad_token_id if pad_token_id is not None else meta.get("pad_token_id")
    pad = pad if pad is not None else (eos[0] if eos else 0)
    ids, mask = _left_pad(input_ids, pad)
    B, T = ids.shape
    ctx = int(meta.get("max_length", 1 << 30))
    if T + max_new_tokens > ctx:
        raise NacInputError(f"prompt of {T} tokens + {max_new_tokens} new tokens exceeds the model's context of "
                            f"{ctx} tokens")
    vocab = int(meta.get("vocab_size", 1 << 62))
    if ids.min() < 0 or ids.max() >= vocab:
        raise NacInputError(f"token ids must be in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}")
    if max_new_tokens == 0:
        return (ids, np.zeros((0, B, 0), np.float32)) if return_logits else ids
    c = meta["cache"]
    L, H, D = c["layers"], c["kv_heads"], c["head_dim"]
    cap = T + max_new_tokens - 1
    # The KV cache lives in the decode plan's own input buffers: each step then writes one token
    # and one key/value column instead of copying the whole cache into the plan (measured: that
    # copy was a third of a GPT-2 int8 decode step).
    with model.session({"input_ids": (B, 1), "attention_mask": (B, 1), "past_mask": (B, cap),
                        "past_keys": (L, B, H, cap, D), "past_values": (L, B, H, cap, D)}) as plan:
        return _decode(model, plan, ids, mask, max_new_tokens, eos, pad, on_token, seed, return_logits,
                       dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                            repetition_penalty=repetition_penalty), step_lock or contextlib.nullcontext())


def _decode(model, plan, ids, mask, max_new_tokens, eos, pad, on_token, seed, return_logits, sampling, step_lock):
    """The prefill and the decode loop of `generate`, over a decode plan this call owns."""
    B, T = ids.shape
    keys, values, cache_mask = plan.inputs["past_keys"], plan.inputs["past_values"], plan.inputs["past_mask"]
    L, _, H, _, D = keys.shape
    keys.fill(0)
    values.fill(0)
    cache_mask.fill(0)
    plan.inputs["attention_mask"].fill(1)
    out_index = {name: k for k, name in enumerate(model.output_names)}
    rng = np.random.default_rng(seed)
    empty = np.zeros((L, B, H, 0, D), np.float32)
    with step_lock:
        logits, k_new, v_new = model.run({"input_ids": ids, "attention_mask": mask,
                                          "past_mask": np.zeros((B, 0), np.int64), "past_keys": empty,
                                          "past_values": empty})
    keys[:, :, :, :T], values[:, :, :, :T], cache_mask[:, :T] = k_new, v_new, mask
    filled, seqs, done, all_logits = T, ids, np.zeros(B, bool), []
    step_logits = logits[:, -1]
    for step in range(max_new_tokens):
        if return_logits:
            all_logits.append(step_logits.astype(np.float32))
        scores = process_logits(step_logits, seqs, **sampling)
        if sampling["do_sample"]:
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            nxt = np.array([rng.choice(p.shape[1], p=row) for row in p], np.int64)
        else:
            nxt = scores.argmax(axis=1).astype(np.int64)
        nxt = np.where(done, pad, nxt)
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
        done |= np.isin(nxt, eos)
        stop = on_token is not None and on_token(nxt) is True
        if done.all() or stop or step == max_new_tokens - 1:
            break
        plan.inputs["input_ids"][:, 0] = nxt
        with step_lock:
            plan.run()
        keys[:, :, :, filled] = plan.outputs[out_index["keys"]][:, :, :, 0]
        values[:, :, :, filled] = plan.outputs[out_index["values"]][:, :, :, 0]
        cache_mask[:, filled] = 1
        filled += 1
        step_logits = plan.outputs[out_index["logits"]][:, -1].copy()
    return (seqs, np.stack(all_logits)) if return_logits else seqs


class FairLock:
    """A first-come, first-served lock (a ticket lock): threads that share it get it in the
    order they asked, so generations taking turns step by step progress evenly."""

    def __init__(self):
        self._cond = threading.Condition()
        self._next = self._serving = 0

    def __enter__(self):
        with self._cond:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cond.wait()
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class TextStream:
    """Turns generated token ids into text increments without splitting a multi-byte character:
    the text is decoded from the whole sequence and only a settled suffix is emitted (a trailing
    U+FFFD means an incomplete byte sequence, held back until the next token completes it)."""

    def __init__(self, tokenizer, emit: Callable[[str], None]):
        self.tok, self.emit, self.ids, self.sent = tokenizer, emit, [], ""

    def __call__(self, new_ids) -> None:
        self.ids.append(int(new_ids[0]))
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if text.startswith(self.sent):
            self.emit(text[len(self.sent):])
        self.sent = text

    def end(self) -> None:
        """Emit whatever is still held back (an incomplete character stays U+FFFD, as decode gives it)."""
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text != self.sent and text.startswith(self.sent):
            self.emit(text[len(self.sent):])
        self.sent = text


def generate_text(model: Model, prompt: str, *, stream: Callable[[str], None] | None = None,
                  stop: Sequence[str] = (), **kwargs) -> str:
    """Text in, text out with the tokenizer stored in the file; ``kwargs`` as `generate`.

    ``stream`` receives the completion incrementally. Generation also ends once the completion
    contains one of the ``stop`` strings; the completion is then cut just after the first one
    (as transformers' ``stop_strings`` keeps the stop string). Returns the completion, prompt
    excluded.
    """
    from nac.apps.tasks import text_tokenizer

    tok = text_tokenizer(model, pad=False)
    ids = tok.encode(prompt).ids
    if not ids:
        raise NacInputError("empty prompt: the text encodes to no tokens")
    if isinstance(stop, str):
        stop = [stop]
    if any(not s for s in stop):
        raise NacInputError("stop strings must not be empty")
    streamer = TextStream(tok, stream) if stream else None
    produced: list[int] = []

    def on_token(t) -> bool:
        produced.append(int(t[0]))
        if streamer is not None:
            streamer(t)
        if stop:
            text = tok.decode(produced, skip_special_tokens=True)
            return any(s in text for s in stop)
        return False

    out = generate(model, ids, on_token=on_token, **kwargs)[0]
    if streamer is not None:
        streamer.end()
    text = tok.decode(out[len(ids):].tolist(), skip_special_tokens=True)
    hits = [text.index(s) + len(s) for s in stop if s in text]
    return text[:min(hits)] if hits else text


def iter_text(model: Model, prompt: str, **kwargs):
    """Yield the completion of ``prompt`` piece by piece as it is generated (a generator over
    `generate_text`'s stream, run in a worker thread); ``kwargs`` as `generate_text`. Errors in
    the generation are raised from the iterator."""
    import queue
    import threading

    q: queue.Queue = queue.Queue()
    done = object()

    def work():
        try:
            generate_text(model, prompt, stream=q.put, **kwargs)
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    threading.Thread(target=work, daemon=True, name="nac-generate").start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
