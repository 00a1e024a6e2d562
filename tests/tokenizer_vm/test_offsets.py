"""Encoding.offsets and Encoding.tokens against Hugging Face ``tokenizers``: the same character span
and token text for every token, for WordPiece (BERT normaliser, accents stripped), byte-level BPE
(GPT-2, RoBERTa with trimmed offsets, a Llama-3-style regex split), Unigram (NFKC + Replace +
Metaspace) and a SentencePiece-style BPE with byte fallback. The corpus test covers every 8th line
in CI; NAC_FULL_PARITY=1 (`make parity`) runs every line."""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

STRIDE = 1 if os.environ.get("NAC_FULL_PARITY") else 8


def _diff(ref_encs, our_encs, texts):
    for t, r, o in zip(texts, ref_encs, our_encs):
        if r.tokens != o.tokens:  # the same aligned path gives the texts of added and unknown tokens
            return f"{t[:60]!r}: tokens: ref {r.tokens[:12]} ours {o.tokens[:12]}"
        if r.offsets != o.offsets:
            k = next(i for i, (a, b) in enumerate(zip(r.offsets, o.offsets)) if a != b) \
                if len(r.offsets) == len(o.offsets) else -1
            return f"{t[:60]!r}: token {k} {r.tokens[k] if k >= 0 else ''!r}: ref {r.offsets[k]} ours {o.offsets[k]}"
    return None


@pytest.mark.heavy
def test_corpus_offsets(pair, corpus):
    name, ref, ours = pair
    lines = corpus[::STRIDE]
    bad = _diff(ref.encode_batch(lines), ours.encode_batch(lines), lines)
    assert bad is None, f"{name}: {bad}"


def test_special_tokens_pairs_truncation_padding(pair, corpus):
    """Template tokens and padding are (0, 0); a pair's second text has its own spans; truncation
    (both directions) and padding keep each token's span."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("parity_cases", Path(__file__).with_name("test_parity.py"))
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    name, ref, ours = pair
    texts = parity.GLUED[name] + ["", "  ", "x"]
    assert _diff(ref.encode_batch(texts), ours.encode_batch(texts), texts) is None
    rng = random.Random(2)
    pairs = [(rng.choice(corpus), rng.choice(corpus)) for _ in range(100)]
    for direction in ("right", "left"):
        ref.enable_truncation(20, direction=direction)
        ours.enable_truncation(20, direction=direction)
        pad = ref.token_to_id("<pad>") if ref.token_to_id("<pad>") is not None else 0
        ref.enable_padding(direction=direction, pad_id=pad)
        ours.enable_padding(direction=direction, pad_id=pad)
        try:
            want, got = ref.encode_batch(pairs), ours.encode_batch(pairs)
            assert [e.ids for e in got] == [e.ids for e in want]
            bad = _diff(want, got, [a for a, _ in pairs])
            assert bad is None, f"{name} {direction}: {bad}"
        finally:
            ref.no_truncation()
            ours.no_truncation()
            ref.no_padding()
            ours.no_padding()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_random_unicode_offsets(pairs, text):
    """Random Unicode (combining marks, Hangul jamo, compatibility characters, controls)."""
    for name, (ref, ours) in pairs.items():
        assert ours.encode(text).offsets == ref.encode(text).offsets, f"{name}: {text!r}"


NORMALISATION = ["Cafe\u0301 cafe\u0301\u0323 A\u0323\u0302 \u1100\u1161\u11a8 \uac00\u11a8",  # composing, reordering, jamo
                 "\ufb01ne \u2460 \u00bd \uff21\uff22 \u3300 \u01c4",  # compatibility: ligature, circled, fullwidth
                 "İstanbul ΣΊΣΥΦΟΣ Straße ǅ",  # lowercasing that changes lengths
                 "北京大学 東京 한국어 text",  # padded CJK characters
                 "x\u200bz \u00ad soft\u00adhyphen \x00\x07 ctrl"]


def test_normalisation_edge_cases(pair):
    name, ref, ours = pair
    for t in NORMALISATION:
        assert ours.encode(t).offsets == ref.encode(t).offsets, f"{name}: {t!r}"


def test_offsets_map_tokens_back_to_text(pair, corpus):
    """A property users rely on (NER spans): each span is inside the text and in order."""
    name, _, ours = pair
    for line in corpus[:200]:
        offs = ours.encode(line, add_special_tokens=False).offsets
        assert all(0 <= s <= e <= len(line) for s, e in offs)
        assert all(a[0] <= b[0] for a, b in zip(offs, offs[1:]))
