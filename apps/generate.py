"""Text generation with a KV cache for `.nac` files that carry a generation contract
(`nac.format.generation`): decoder-only (``text-generation``) and encoder-decoder
(``text2text-generation``, ``translation``, ``summarization``). Nothing here imports torch.

The step graph runs prefill (the prompt, no past) or one decode step. The KV cache lives in the
decode plan's own input buffers, preallocated for prompt + max_new_tokens: each step writes one
key/value column at the next slot, unused slots are masked out, so every decode step shares one
shape and one memory plan. An encoder-decoder file runs its encoder once; the cross-attention
keys and values it returns stay in the decode plan for the whole generation.

Decoding follows transformers' ``generate`` (v5) step for step, so that token ids agree:
greedy search and sampling (``_sample``), and beam search (``_beam_search``: top
``max(2, 1 + n_eos) * num_beams`` candidates per step, finished hypotheses scored by
``sum log p / generated_length ** length_penalty``, ``early_stopping`` True / False / "never").
Logits processors run in transformers' order: repetition penalty (CTRL, Keskar et al. 2019;
left padding ignored), no-repeat n-grams, minimum new tokens, forced BOS, forced EOS; then, when
sampling, temperature, top-k and top-p (Holtzman et al. 2020). Sampling uses numpy's PCG64:
reproducible for a seed, but not torch's random stream.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from nac.engine import Model
from nac.errors import NacError, NacInputError
from nac.format.generation import GenerationConfig

_NEG = np.float32(-1.0e9)  # transformers' "never pick this" score in beam search


def _rows(input_ids) -> list[list[int]]:
    if isinstance(input_ids, np.ndarray) and input_ids.ndim in (1, 2):
        rows = [list(input_ids)] if input_ids.ndim == 1 else [list(r) for r in input_ids]
    elif isinstance(input_ids, Sequence) and input_ids and all(isinstance(t, (int, np.integer)) for t in input_ids):
        rows = [list(input_ids)]
    elif isinstance(input_ids, Sequence) and input_ids and all(isinstance(r, (Sequence, np.ndarray)) for r in input_ids):
        rows = [list(r) for r in input_ids]
    elif isinstance(input_ids, Sequence) and not input_ids:
        raise NacInputError("empty prompt: give at least one token")
    else:
        raise NacInputError("input_ids must be a list of token ids, a list of such lists, or a 1-D/2-D integer array")
    if any(len(r) == 0 for r in rows):
        raise NacInputError("empty prompt: give at least one token")
    if any(not isinstance(t, (int, np.integer)) for r in rows for t in r):
        raise NacInputError("token ids must be integers")
    return rows


def _pad(input_ids, pad: int, attention_mask=None, left: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """[B, T] ids and mask: ragged prompts padded on the left (decoder-only) or right (encoder)."""
    if attention_mask is not None:
        ids = np.asarray(input_ids)
        mask = np.asarray(attention_mask)
        if ids.ndim == 1:
            ids, mask = ids[None], mask[None] if mask.ndim == 1 else mask
        if ids.ndim != 2 or ids.shape != mask.shape or ids.dtype.kind not in "iu" or mask.dtype.kind not in "iub":
            raise NacInputError(f"attention_mask must be an integer array of the shape of input_ids {list(ids.shape)}")
        if ids.shape[1] == 0 or not mask.any(axis=1).all():
            raise NacInputError("empty prompt: every row needs at least one unmasked token")
        return ids.astype(np.int64), (mask != 0).astype(np.int64)
    rows = _rows(input_ids)
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for b, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[b, span] = r
        mask[b, span] = 1
    return ids, mask


@dataclass
class _Settings:
    """The checked arguments of one `generate` call."""

    max_new_tokens: int
    min_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    num_beams: int
    length_penalty: float
    early_stopping: object
    num_return_sequences: int
    eos: list
    pad: int
    forced_bos: int | None
    forced_eos: list


def process_logits(scores: np.ndarray, seqs: np.ndarray, *, do_sample: bool, temperature: float, top_k: int,
                   top_p: float, repetition_penalty: float, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0,
                   prompt_length: int = 0, ignore: np.ndarray | None = None, eos=(), forced_bos=None,
                   forced_eos=(), max_length: int | None = None) -> np.ndarray:
    """transformers' logits processors, then (sampling) its warpers, on [N, V] scores.

    Args:
        scores: [N, V] logits (greedy, sampling) or log-probabilities (beam search).
        seqs: [N, cur_len] int64, each row's tokens so far (prompt included).
        prompt_length: the (padded) prompt length, for ``min_new_tokens``.
        ignore: [N] leading positions of each row the repetition penalty skips (left padding).
        max_length: prompt + max_new_tokens, for ``forced_eos``.
    Returns:
        A new [N, V] array of the dtype of ``scores``.
    """
    s = np.array(scores, copy=True)
    n, vocab = s.shape
    cur = seqs.shape[1]
    if repetition_penalty != 1.0:
        for b in range(n):
            idx = np.unique(seqs[b, 0 if ignore is None else int(ignore[b]):])
            idx = idx[(idx >= 0) & (idx < vocab)]
            v = s[b, idx]
            s[b, idx] = np.where(v < 0, v * repetition_penalty, v / repetition_penalty)
    if no_repeat_ngram_size and cur >= no_repeat_ngram_size:
        k = no_repeat_ngram_size
        for b in range(n):
            row = seqs[b]
            prefix = row[cur + 1 - k:]
            windows = np.lib.stride_tricks.sliding_window_view(row, k)
            banned = windows[(windows[:, :-1] == prefix).all(axis=1), -1]
            s[b, banned[(banned >= 0) & (banned < vocab)]] = -np.inf
    if eos and cur - prompt_length < min_new_tokens:
        s[:, [e for e in eos if 0 <= e < vocab]] = -np.inf
    if forced_bos is not None and cur == 1:
        s[:] = -np.inf
        s[:, forced_bos] = 0
    if forced_eos and max_length is not None and cur == max_length - 1:
        s[:] = -np.inf
        s[:, list(forced_eos)] = 0
    if not do_sample:
        return s
    if temperature != 1.0:
        s /= temperature
    if top_k and top_k < vocab:
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


def generate(model: Model, input_ids=None, *, attention_mask=None, max_new_tokens: int | None = None,
             min_new_tokens: int | None = None, do_sample: bool | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
             no_repeat_ngram_size: int | None = None, num_beams: int | None = None,
             length_penalty: float | None = None, early_stopping=None, num_return_sequences: int = 1,
             seed: int | None = None, eos_token_id=None, pad_token_id: int | None = None,
             on_token: Callable[[np.ndarray], bool | None] | None = None, return_logits: bool = False,
             step_lock=None):
    """Generate continuations of token-id prompts, returning sequences like transformers'
    ``model.generate`` (also `Model.generate`).

    Args:
        model: a loaded model with a generation contract (decoder-only or encoder-decoder).
        input_ids: one prompt (list of ids or 1-D array) or a batch (list of lists, or [B, T]
            with ``attention_mask``). Decoder-only prompts of different lengths are left-padded;
            encoder inputs are right-padded.
        attention_mask: [B, T] (1 = token, 0 = padding) for an already padded [B, T] array
            (decoder-only prompts must then be left-padded, as for transformers).
        max_new_tokens: tokens to add at most (default: the file's, else 20).
        min_new_tokens: EOS is impossible before this many new tokens.
        do_sample / temperature / top_k / top_p / repetition_penalty: as transformers (top_k 0 =
            off; defaults from the file, else greedy).
        no_repeat_ngram_size: no n-gram of this size occurs twice (the prompt included for
            decoder-only models, as transformers).
        num_beams: beam search with this many beams (1 = greedy or sampling). Beam search is
            deterministic: ``do_sample`` must be off.
        length_penalty: beam scores are ``sum log p / length ** length_penalty``.
        early_stopping: True (stop once ``num_beams`` hypotheses are finished), False (stop when
            no running beam can beat the worst finished one, by transformers' heuristic) or
            ``"never"``.
        num_return_sequences: sequences per prompt (<= num_beams for beam search; with sampling,
            independent samples; greedy allows 1).
        seed: seed for sampling (numpy PCG64).
        eos_token_id: int or list; default from the file. A sequence that emits one stops; its
            row is filled with ``pad_token_id`` (default: the file's, else the first EOS id).
        on_token: greedy/sampling only: called with the [rows] new token ids after each step;
            returning ``True`` stops early.
        return_logits: greedy/sampling only: also return the [steps, rows, V] float32 logits.
        step_lock: a context manager held around each engine step (a server's `FairLock`), so
            generations sharing it take turns step by step.
    Returns:
        int64 [B * num_return_sequences, L] sequences: the (padded) prompt and the new tokens
        for decoder-only models; the decoder's tokens, starting with the decoder start token,
        for encoder-decoder ones. Plus the logits if asked.
    Raises:
        NacError: the model has no generation contract.
        NacInputError: an empty prompt, prompt + new tokens beyond the model's context, token
            ids outside the vocabulary, or an invalid setting (temperature <= 0 when sampling,
            top_p outside (0, 1], num_return_sequences > num_beams, ...).
    """
    cfg = model.generation_config
    _check_contract(model, cfg)
    d = cfg.defaults

    def pick(value, key, default):
        return value if value is not None else d.get(key, default)

    s = _Settings(max_new_tokens=pick(max_new_tokens, "max_new_tokens", 20),
                  min_new_tokens=pick(min_new_tokens, "min_new_tokens", 0),
                  do_sample=bool(pick(do_sample, "do_sample", False)), temperature=pick(temperature, "temperature", 1.0),
                  top_k=pick(top_k, "top_k", 0), top_p=pick(top_p, "top_p", 1.0),
                  repetition_penalty=pick(repetition_penalty, "repetition_penalty", 1.0),
                  no_repeat_ngram_size=pick(no_repeat_ngram_size, "no_repeat_ngram_size", 0),
                  num_beams=pick(num_beams, "num_beams", 1), length_penalty=pick(length_penalty, "length_penalty", 1.0),
                  early_stopping=pick(early_stopping, "early_stopping", False),
                  num_return_sequences=num_return_sequences, eos=[], pad=0, forced_bos=cfg.forced_bos_token_id,
                  forced_eos=list(cfg.forced_eos_token_id))
    _check(s)
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    s.eos = [int(eos)] if isinstance(eos, (int, np.integer)) else [int(e) for e in (eos or [])]
    pad = pad_token_id if pad_token_id is not None else cfg.pad_token_id
    s.pad = int(pad if pad is not None else (s.eos[0] if s.eos else 0))
    if s.num_beams > 1 and (on_token is not None or return_logits):
        raise NacInputError("on_token and return_logits follow one sequence per row: use them without beam search")
    ids, mask = _pad(input_ids, s.pad, attention_mask, left=not cfg.is_encoder_decoder)
    B, T = ids.shape
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise NacInputError(f"token ids must be in [0, {cfg.vocab_size}); got {int(ids.min())}..{int(ids.max())}")
    decoder_prompt = 1 if cfg.is_encoder_decoder else T
    if decoder_prompt + s.max_new_tokens > cfg.max_length:
        what = "the decoder start token" if cfg.is_encoder_decoder else f"prompt of {T} tokens"
        raise NacInputError(f"{what} + {s.max_new_tokens} new tokens exceeds the model's context of "
                            f"{cfg.max_length} tokens")
    rows = s.num_beams if s.num_beams > 1 else s.num_return_sequences
    if s.max_new_tokens == 0:
        n = s.num_return_sequences
        start = np.full((B * n, 1), cfg.decoder_start_token_id, np.int64) if cfg.is_encoder_decoder \
            else np.repeat(ids, n, axis=0)
        return (start, np.zeros((0, len(start), 0), np.float32)) if return_logits else start
    lock = step_lock or contextlib.nullcontext()
    steps = (_Seq2SeqSteps if cfg.is_encoder_decoder else _CausalSteps)(model, cfg, ids, mask, rows,
                                                                       s.max_new_tokens, lock)
    with steps:
        if s.num_beams > 1:
            return _beam_search(steps, s)
        return _sample(steps, s, on_token, seed, return_logits)


def _check_contract(model: Model, cfg: GenerationConfig) -> None:
    """The methods the contract names exist and exchange the contract's tensors; its special
    token ids lie in the vocabulary.

    Raises:
        NacFormatError: a named method is missing, its inputs or outputs are not the contract's, or
            a decoder start / forced token id is outside the vocabulary."""
    from nac.errors import NacFormatError
    from nac.format import generation as G

    if cfg.is_encoder_decoder:
        roles = {"encode": (G.ENCODE_INPUTS, G.ENCODE_OUTPUTS), "decode": (G.DECODE_INPUTS, G.STEP_OUTPUTS)}
    else:
        roles = {"step": (G.STEP_INPUTS, G.STEP_OUTPUTS)}
    special = {"decoder_start_token_id": [cfg.decoder_start_token_id] if cfg.is_encoder_decoder else [],
               "forced_bos_token_id": [] if cfg.forced_bos_token_id is None else [cfg.forced_bos_token_id],
               "forced_eos_token_id": list(cfg.forced_eos_token_id)}
    for key, ids in special.items():
        if any(not 0 <= i < cfg.vocab_size for i in ids):
            raise NacFormatError(f"{model.path.name}: generation.{key} {ids} lies outside the vocabulary of "
                                 f"{cfg.vocab_size}")
    for role, (inputs, outputs) in roles.items():
        method = model.methods.get(cfg.methods[role])
        if method is None:
            raise NacFormatError(f"{model.path.name}: generation.methods.{role} names {cfg.methods[role]!r}, "
                                 f"which the file does not have (it has {list(model.methods)})")
        if set(method.input_names) != set(inputs) or not set(outputs) <= set(method.output_names):
            raise NacFormatError(f"{model.path.name}: method {method.name!r} takes {method.input_names} and gives "
                                 f"{method.output_names}; the {role} role needs inputs {list(inputs)} and outputs "
                                 f"{list(outputs)}")


def _check(s: _Settings) -> None:
    def count(v, name, lo):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise NacInputError(f"{name} must be an integer >= {lo}, not {v!r}")

    count(s.max_new_tokens, "max_new_tokens", 0)
    count(s.min_new_tokens, "min_new_tokens", 0)
    count(s.top_k, "top_k", 0)
    count(s.no_repeat_ngram_size, "no_repeat_ngram_size", 0)
    count(s.num_beams, "num_beams", 1)
    count(s.num_return_sequences, "num_return_sequences", 1)
    if s.do_sample and not s.temperature > 0:
        raise NacInputError(f"temperature must be > 0 when sampling, not {s.temperature!r}")
    if not 0 < s.top_p <= 1:
        raise NacInputError(f"top_p must be in (0, 1], not {s.top_p!r}")
    if not s.repetition_penalty > 0:
        raise NacInputError(f"repetition_penalty must be > 0, not {s.repetition_penalty!r}")
    if not np.isfinite(s.length_penalty):
        raise NacInputError(f"length_penalty must be a finite number, not {s.length_penalty!r}")
    if s.early_stopping not in (True, False, "never"):
        raise NacInputError(f"early_stopping must be True, False or 'never', not {s.early_stopping!r}")
    if s.num_beams > 1 and s.do_sample:
        raise NacInputError("beam search with sampling (beam-sample) is not supported: set do_sample=False")
    if s.num_beams > 1 and s.num_return_sequences > s.num_beams:
        raise NacInputError(f"num_return_sequences ({s.num_return_sequences}) must be <= num_beams ({s.num_beams})")
    if s.num_beams == 1 and not s.do_sample and s.num_return_sequences > 1:
        raise NacInputError("greedy search returns one sequence per prompt: sample or use beam search for more")


def _cache_shapes(cache, rows: int, capacity: int) -> dict[str, tuple]:
    """The self-attention KV cache inputs of a step method for ``rows`` sequences of ``capacity`` slots."""
    kv = (cache.layers, rows, cache.kv_heads, capacity, cache.head_dim)
    return {"past_mask": (rows, capacity), "past_keys": kv, "past_values": kv}


class _CausalSteps:
    """A decoder-only file's steps: the prefill of ``ids`` [B, T], then one token at a time for
    ``rows`` copies of each prompt, with the KV cache in the decode plan's input buffers."""

    def __init__(self, model: Model, cfg: GenerationConfig, ids, mask, rows: int, max_new: int, lock):
        self.method = model.methods[cfg.methods["step"]]
        self.ids, self.mask, self.rows, self.lock = ids, mask, rows, lock
        B, T = ids.shape
        c = cfg.cache
        self.cap = T + max_new - 1
        self.n = B * rows
        self._session = self.method.session({"input_ids": (self.n, 1), "attention_mask": (self.n, 1),
                                             **_cache_shapes(c, self.n, self.cap)})
        self.token_input = "input_ids"
        self.prompt = np.repeat(ids, rows, axis=0)
        self.prompt_mask = np.repeat(mask, rows, axis=0)

    def __enter__(self):
        plan = self.plan = self._session.__enter__()
        self.out = {name: k for k, name in enumerate(self.method.output_names)}
        self.keys, self.values = plan.inputs["past_keys"], plan.inputs["past_values"]
        self.cache_mask = plan.inputs["past_mask"]
        self.keys.fill(0)  # masked slots are skipped, but 0 * garbage (a NaN) would not be
        self.values.fill(0)
        self.cache_mask.fill(0)
        if "attention_mask" in plan.inputs:
            plan.inputs["attention_mask"].fill(1)
        self.filled = 0
        return self

    def __exit__(self, *exc):
        return self._session.__exit__(*exc)

    def first(self) -> np.ndarray:
        """The prefill: the [rows, V] logits of the token after each prompt."""
        B, T = self.ids.shape
        c = self.keys.shape
        empty = np.zeros((c[0], B, c[2], 0, c[4]), np.float32)
        with self.lock:
            logits, k, v = self.method.run({"input_ids": self.ids, "attention_mask": self.mask,
                                            "past_mask": np.zeros((B, 0), np.int64), "past_keys": empty,
                                            "past_values": empty}, logits_to_keep=1)
        self.keys[:, :, :, :T] = np.repeat(k, self.rows, axis=1)
        self.values[:, :, :, :T] = np.repeat(v, self.rows, axis=1)
        self.cache_mask[:, :T] = self.prompt_mask
        self.filled = T
        return np.repeat(logits[:, -1], self.rows, axis=0)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one [rows] token per row; the [rows, V] logits of the next."""
        plan = self.plan
        plan.inputs[self.token_input][:, 0] = tokens
        with self.lock:
            plan.run()
        self.keys[:, :, :, self.filled] = plan.outputs[self.out["keys"]][:, :, :, 0]
        self.values[:, :, :, self.filled] = plan.outputs[self.out["values"]][:, :, :, 0]
        self.cache_mask[:, self.filled] = 1
        self.filled += 1
        return plan.outputs[self.out["logits"]][:, -1].copy()

    def reorder(self, index: np.ndarray) -> None:
        """Beam search: row r continues the hypothesis of row ``index[r]``."""
        f = self.filled
        self.keys[:, :, :, :f] = self.keys[:, index, :, :f]
        self.values[:, :, :, :f] = self.values[:, index, :, :f]
        self.cache_mask[:] = self.cache_mask[index]


class _Seq2SeqSteps(_CausalSteps):
    """An encoder-decoder file's steps: the encoder once over ``ids`` [B, S], its cross-attention
    keys and values copied into the decode plan, then the decoder one token at a time from the
    decoder start token."""

    def __init__(self, model: Model, cfg: GenerationConfig, ids, mask, rows: int, max_new: int, lock):
        self.encoder = model.methods[cfg.methods["encode"]]
        self.method = model.methods[cfg.methods["decode"]]
        self.ids, self.mask, self.rows, self.lock = ids, mask, rows, lock
        B, S = ids.shape
        c = cfg.cache
        self.cap = max_new
        self.n = B * rows
        cross = (c.layers, self.n, c.kv_heads, S, c.head_dim)
        self._session = self.method.session({
            "decoder_input_ids": (self.n, 1), "encoder_attention_mask": (self.n, S), "cross_keys": cross,
            "cross_values": cross, **_cache_shapes(c, self.n, self.cap)})
        self.token_input = "decoder_input_ids"
        self.prompt = np.full((self.n, 1), int(cfg.decoder_start_token_id), np.int64)
        self.prompt_mask = np.ones((self.n, 1), np.int64)

    def first(self) -> np.ndarray:
        with self.lock:
            outs = dict(zip(self.encoder.output_names, self.encoder.run({"input_ids": self.ids,
                                                                         "attention_mask": self.mask})))
        plan = self.plan
        plan.inputs["cross_keys"][:] = np.repeat(outs["cross_keys"], self.rows, axis=1)
        plan.inputs["cross_values"][:] = np.repeat(outs["cross_values"], self.rows, axis=1)
        plan.inputs["encoder_attention_mask"][:] = np.repeat(self.mask, self.rows, axis=0)
        return self.step(self.prompt[:, 0])


def _sample(steps: _CausalSteps, s: _Settings, on_token, seed, return_logits):
    """Greedy search or multinomial sampling (transformers' ``_sample``)."""
    rng = np.random.default_rng(seed)
    seqs = steps.prompt
    prompt_len = seqs.shape[1]
    ignore = np.argmax(steps.prompt_mask != 0, axis=1)
    max_length = prompt_len + s.max_new_tokens
    done = np.zeros(len(seqs), bool)
    all_logits = []
    logits = steps.first()
    for step in range(s.max_new_tokens):
        if return_logits:
            all_logits.append(logits.astype(np.float32))
        scores = process_logits(logits.astype(np.float64), seqs, do_sample=s.do_sample, temperature=s.temperature,
                                top_k=s.top_k, top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                                no_repeat_ngram_size=s.no_repeat_ngram_size, min_new_tokens=s.min_new_tokens,
                                prompt_length=prompt_len, ignore=ignore, eos=s.eos, forced_bos=s.forced_bos,
                                forced_eos=s.forced_eos, max_length=max_length)
        if s.do_sample:
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            nxt = np.array([rng.choice(p.shape[1], p=row) for row in p], np.int64)
        else:
            nxt = scores.argmax(axis=1).astype(np.int64)
        nxt = np.where(done, s.pad, nxt)
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
        done |= np.isin(nxt, s.eos)
        stop = on_token is not None and on_token(nxt) is True
        if done.all() or stop or step == s.max_new_tokens - 1:
            break
        logits = steps.step(nxt)
    return (seqs, np.stack(all_logits)) if return_logits else seqs


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    m = x.max(axis=-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))).astype(np.float32)


def _top(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, largest first (ties: lower index first).

    A row much longer than k (beams x vocabulary) is partitioned first: only the entries at or
    above its k-th largest value are sorted, which picks the same indices as a full stable sort."""
    if 8 * k >= x.shape[1]:
        return np.argsort(-x, axis=1, kind="stable")[:, :k]
    kth = -np.partition(-x, k - 1, axis=1)[:, k - 1]  # each row's k-th largest value
    out = np.empty((x.shape[0], k), np.int64)
    for r in range(x.shape[0]):
        cand = np.flatnonzero(x[r] >= kth[r])
        out[r] = cand[np.argsort(-x[r, cand], kind="stable")[:k]]
    return out


def _beam_search(steps: _CausalSteps, s: _Settings) -> np.ndarray:
    """Beam search, transformers v5's vectorised ``_beam_search`` in numpy (float32 scores).

    Per prompt: ``K = num_beams`` running beams (the first starts at 0, the others at -1e9 so the
    first step does not pick K copies of one token); each step keeps the top
    ``max(2, 1 + n_eos) * K`` continuations, moves those that end (EOS or the length limit)
    and rank among the first K to the finished set (scored with the length penalty), and
    continues with the best K that did not end."""
    K, V_rows = s.num_beams, steps.n
    B = V_rows // K
    prompt = steps.prompt.reshape(B, K, -1)
    prompt_len = prompt.shape[2]
    max_length = prompt_len + s.max_new_tokens
    fill = (s.pad if s.pad else s.eos[0]) if s.eos else -1
    keep = max(2, 1 + len(s.eos)) * K
    top_mask = np.arange(keep) < K
    running = np.full((B, K, max_length), fill, np.int64)
    running[:, :, :prompt_len] = prompt
    finished_seqs = running.copy()
    running_scores = np.zeros((B, K), np.float32)
    running_scores[:, 1:] = _NEG
    finished_scores = np.full((B, K), _NEG, np.float32)
    is_finished = np.zeros((B, K), bool)
    improvable = np.ones((B, 1), bool)
    running_idx = np.full((B, K, s.max_new_tokens), -1, np.int64)
    finished_idx = running_idx.copy()
    ignore = np.argmax(steps.prompt_mask != 0, axis=1)
    rows = np.arange(B)[:, None]
    cur = prompt_len
    logits = steps.first()
    while True:
        logp = process_logits(_log_softmax(logits), running[:, :, :cur].reshape(B * K, cur), do_sample=False,
                              temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=s.repetition_penalty,
                              no_repeat_ngram_size=s.no_repeat_ngram_size, min_new_tokens=s.min_new_tokens,
                              prompt_length=prompt_len, ignore=ignore, eos=s.eos, forced_bos=s.forced_bos,
                              forced_eos=s.forced_eos, max_length=max_length)
        V = logp.shape[1]
        acc = (logp.reshape(B, K, V) + running_scores[:, :, None]).reshape(B, K * V).astype(np.float32)
        # c. the top continuations over all beams of a prompt
        top = _top(acc, keep)
        top_scores = np.take_along_axis(acc, top, axis=1)
        beam, token = top // V, top % V
        top_seqs = running[rows, beam]
        top_seqs[:, :, cur] = token
        top_idx = running_idx[rows, beam]
        top_idx[:, :, cur - prompt_len] = beam + rows * K
        # d. which of them end here
        ends = np.isin(token, s.eos) | (cur + 1 >= max_length)
        # e. the best K that go on
        going = (top_scores + ends.astype(np.float32) * _NEG).astype(np.float32)
        nxt = _top(going, K)
        running = top_seqs[rows, nxt]
        running_scores = np.take_along_axis(going, nxt, axis=1)
        running_idx = top_idx[rows, nxt]
        # f. the finished set: the old one merged with the candidates that just ended in the top K
        just = ends & top_mask[None, :]
        cand = (top_scores / np.float32((cur + 1 - prompt_len) ** s.length_penalty)).astype(np.float32)
        full = is_finished.all(axis=1, keepdims=True) & (s.early_stopping is True)
        cand = cand + full.astype(np.float32) * _NEG
        cand = cand + (~improvable).astype(np.float32) * _NEG
        cand = (cand + (~just).astype(np.float32) * _NEG).astype(np.float32)
        merged_scores = np.concatenate([finished_scores, cand], axis=1)
        best = _top(merged_scores, K)
        finished_seqs = np.concatenate([finished_seqs, top_seqs], axis=1)[rows, best]
        finished_scores = np.take_along_axis(merged_scores, best, axis=1)
        finished_idx = np.concatenate([finished_idx, top_idx], axis=1)[rows, best]
        is_finished = np.concatenate([is_finished, just], axis=1)[rows, best]
        origin = running_idx[:, :, cur - prompt_len].reshape(-1)
        cur += 1
        # the early-stopping heuristic (transformers' _check_early_stop_heuristic)
        if s.early_stopping == "never" and s.length_penalty > 0.0:
            best_len = max_length - prompt_len
        else:
            best_len = cur - prompt_len
        best_running = running_scores[:, :1] / np.float32(best_len ** s.length_penalty)
        worst_finished = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), _NEG)
        improvable = improvable & (best_running > worst_finished).any(axis=1, keepdims=True)
        if not (improvable.any() and not (is_finished.all() and s.early_stopping is True) and not ends.all()):
            break
        steps.reorder(origin)
        logits = steps.step(running[:, :, cur - 1].reshape(-1))
    n = s.num_return_sequences
    seqs = finished_seqs[:, :n].reshape(B * n, -1)
    generated = int((finished_idx[:, :n].reshape(B * n, -1) >= 0).sum(axis=1).max())
    return seqs[:, :prompt_len + generated]


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

    out = generate(model, ids, on_token=on_token if (stream or stop) else None, **kwargs)[0]
    if streamer is not None:
        streamer.end()
    skip = 1 if model.generation_config.is_encoder_decoder else len(ids)  # the decoder start token, or the prompt
    text = tok.decode(out[skip:].tolist(), skip_special_tokens=True)
    hits = [text.index(s) + len(s) for s in stop if s in text]
    return text[:min(hits)] if hits else text


def text2text(model: Model, texts: Sequence[str], **kwargs) -> list[list[str]]:
    """Encoder-decoder text in, text out (translation, summarisation, text2text): each text is
    encoded with the file's tokenizer (its special tokens added, as transformers' pipelines do),
    the batch is generated at once (``kwargs`` as `generate`: ``num_beams``,
    ``num_return_sequences``, ...) and decoded without special tokens.

    Returns:
        For each text, its ``num_return_sequences`` outputs (best first).
    Raises:
        NacError: the model is not an encoder-decoder generation model.
        NacInputError: as `generate`; also a text that encodes to no tokens.
    """
    from nac.apps.tasks import text_tokenizer

    if not model.generation_config.is_encoder_decoder:
        raise NacError(f"{model.path.name} is a decoder-only model: use generate_text")
    if isinstance(texts, str):
        raise NacInputError("text2text takes a list of texts")
    tok = text_tokenizer(model, pad=False)
    ids = [e.ids for e in tok.encode_batch(list(texts))]
    if any(not r for r in ids):
        raise NacInputError("empty input: a text encodes to no tokens")
    out = generate(model, ids, **kwargs)
    per = len(out) // len(ids)
    decoded = [tok.decode(row[1:].tolist(), skip_special_tokens=True) for row in out]
    return [decoded[i * per:(i + 1) * per] for i in range(len(ids))]


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
