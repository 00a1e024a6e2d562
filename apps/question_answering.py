"""Extractive question answering (task ``question-answering``): a span of the context, from a
``…ForQuestionAnswering`` model's start and end logits.

transformers 5 no longer ships this pipeline; NAC follows transformers 4's
``QuestionAnsweringPipeline`` (4.46, fast tokenizer, question first) step by step:

1. The question and the context are tokenised as a pair, truncating only the context to
   ``max_seq_len``; a long context is cut into windows of the tokens that fit, each window starting
   ``fit - doc_stride`` tokens after the previous one (``tokenizers``' overflowing encodings).
2. In each window, tokens outside the context (question, special tokens, padding) are masked
   with -10000 in both logit rows, except the [CLS] token; each row is softmaxed over the window.
3. With ``handle_impossible_answer``, ``start[0] * end[0]`` (the [CLS] position) is the score of
   "no answer", kept as the minimum over windows. Position 0 is then zeroed.
4. Every pair start <= end < start + ``max_answer_len`` scores ``start[s] * end[e]``; the
   ``top_k`` best whose both ends are context tokens are answers.
5. An answer's characters run from the start of the word holding its first token to the end of
   the word holding its last (``align_to_words``; else the tokens' own offsets).
6. Answers from all windows (and the empty "no answer") are sorted by score; the best ``top_k``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from nac.apps.tasks import _require_task
from nac.engine import Model
from nac.errors import NacInputError
from nac.tokenizer_vm.offsets import text_offsets


@dataclass
class Answer:
    """One answer: its probability score, character span [start, end) in the context, and text."""

    score: float
    start: int
    end: int
    answer: str


def _windows(n: int, fit: int, stride: int) -> list[tuple[int, int]]:
    """``tokenizers``' ``Encoding::truncate`` (right): windows of ``fit`` tokens, stepping
    ``fit - stride``, the last one reaching the end."""
    if n <= fit:
        return [(0, n)]
    if fit <= 0:
        raise NacInputError("the question leaves no room for the context (raise max_seq_len)")
    if stride >= fit:
        raise NacInputError(f"doc_stride {stride} must be smaller than the {fit} context tokens that fit a window")
    out, start = [], 0
    while True:
        stop = min(start + fit, n)
        out.append((start, stop))
        if stop == n:
            return out
        start += fit - stride


def answer_questions(model: Model, questions: list[str], contexts: list[str], top_k: int = 1, doc_stride: int = 128,
                     max_answer_len: int = 15, max_seq_len: int | None = None, max_question_len: int = 64,
                     handle_impossible_answer: bool = False, align_to_words: bool = True) -> list[list[Answer]]:
    """The ``top_k`` answers to each question in its context (the module docstring gives the rule).

    Args:
        questions, contexts: equal-length lists of texts.
        top_k: answers per question; max_answer_len: longest answer in tokens.
        doc_stride: tokens shared by consecutive windows of a long context.
        max_seq_len: tokens per window, question and special tokens included (default:
            min(model max length, 384)). max_question_len is accepted for transformers
            compatibility (transformers 4 ignores it for fast tokenizers too).

    Raises:
        NacError: the model is not a question-answering model or has no tokenizer.
        NacInputError: mismatched or empty lists, bad settings, a question too long for a window.
    """
    _require_task(model, "question-answering")
    if not questions or len(questions) != len(contexts):
        raise NacInputError("give as many contexts as questions (and at least one)")
    if top_k < 1 or max_answer_len < 1 or doc_stride < 0:
        raise NacInputError("top_k and max_answer_len must be >= 1, doc_stride >= 0")
    max_seq_len = max_seq_len or min(int(model.metadata.get("max_length", 512)), 384)
    doc_stride = min(doc_stride, max_seq_len // 2)
    tok = copy.copy(model.tokenizer)
    tok.no_truncation()
    tok.no_padding()
    n_special = len(tok.encode("a", "b").ids) - len(tok.encode("a", add_special_tokens=False).ids) \
        - len(tok.encode("b", add_special_tokens=False).ids)
    cls = model.metadata.get("cls_token")
    cls_id = tok.token_to_id(cls) if cls else None
    features = []  # (question index, ids, type_ids, context token index of each position or None)
    spans = []  # per question: the context's token offsets and words
    for qi, (q, c) in enumerate(zip(questions, contexts)):
        q_ids = tok.encode(q, add_special_tokens=False).ids
        c_ids, c_offs, _, c_words = text_offsets(tok, c)
        spans.append((c_offs, c_words))
        for a, b in _windows(len(c_ids), max_seq_len - n_special - len(q_ids), doc_stride):
            enc = tok.template(q_ids, c_ids[a:b])
            pos = [None if item is None or item[0] != "B" else a + item[1] for item in enc.layout]
            features.append((qi, enc.ids, enc.type_ids, pos))
    width = max(len(f[1]) for f in features)
    pad = tok.token_to_id(model.metadata.get("pad_token") or "") or 0
    ids = np.full((len(features), width), pad, np.int64)
    types = np.zeros((len(features), width), np.int64)
    mask = np.zeros((len(features), width), np.int64)
    for k, (_, i, t, _) in enumerate(features):
        ids[k, :len(i)], types[k, :len(t)], mask[k, :len(i)] = i, t, 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in model.input_names:
        feeds["token_type_ids"] = types
    outs = dict(zip(model.output_names, model.run(feeds)))
    starts, ends = outs["start_logits"].astype(np.float32), outs["end_logits"].astype(np.float32)

    results: list[list[Answer]] = [[] for _ in questions]
    null = [1000000.0] * len(questions)
    for k, (qi, fid, _, pos) in enumerate(features):
        wanted = np.array([p is not None or (cls_id is not None and i == cls_id) for p, i in zip(pos, fid)]
                          + [False] * (width - len(fid)))
        s = _softmax_masked(starts[k], wanted)
        e = _softmax_masked(ends[k], wanted)
        if handle_impossible_answer:
            null[qi] = min(null[qi], float(s[0] * e[0]))
        s[0] = e[0] = 0.0
        context = np.array([p is not None for p in pos] + [False] * (width - len(pos)))
        for a, b, score in _decode(s, e, top_k, max_answer_len, wanted):
            if not (context[a] and context[b]):
                continue  # the [CLS] token is no context
            c, (offs, words) = contexts[qi], spans[qi]
            i0, i1 = pos[a], pos[b]
            if align_to_words:
                first = min(j for j, w in enumerate(words) if w == words[i0])
                last = max(j for j, w in enumerate(words) if w == words[i1])
                lo, hi = offs[first][0], offs[last][1]
            else:
                lo, hi = offs[i0][0], offs[i1][1]
            results[qi].append(Answer(float(score), lo, hi, c[lo:hi]))
    out = []
    for qi, answers in enumerate(results):
        if handle_impossible_answer:
            answers.append(Answer(null[qi], 0, 0, ""))
        out.append(sorted(answers, key=lambda x: x.score, reverse=True)[:top_k])
    return out


def _softmax_masked(x: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    x = np.where(wanted, x, np.float32(-10000.0)).astype(np.float64)
    x = np.exp(x - x.max())
    return x / x.sum()


def _decode(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int, wanted: np.ndarray):
    """transformers 4's ``decode_spans``: the ``top_k`` (start, end) pairs by start[s] * end[e]
    with s <= e < s + max_answer_len, kept when both ends are wanted tokens."""
    outer = np.triu(np.tril(np.outer(start, end), max_answer_len - 1))
    flat = outer.ravel()
    if top_k == 1:
        order = np.array([int(np.argmax(flat))])
    elif flat.size < top_k:
        order = np.argsort(-flat)
    else:
        idx = np.argpartition(-flat, top_k)[:top_k]
        order = idx[np.argsort(-flat[idx])]
    s, e = np.unravel_index(order, outer.shape)
    keep = wanted[s] & wanted[e]
    return [(int(a), int(b), float(outer[a, b])) for a, b in zip(s[keep], e[keep])]
