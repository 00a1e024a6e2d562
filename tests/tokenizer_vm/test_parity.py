"""TISA against Hugging Face ``tokenizers``: identical ids, masks and decoded text.

Every test compares with the reference run in the same process; nothing is a stored expectation.
"""
from __future__ import annotations

import random
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _fields(e):
    return e.ids, e.type_ids, e.attention_mask, e.special_tokens_mask


def _assert_same(ref_encs, our_encs, texts, what: str) -> None:
    bad = [(t, r.ids, o.ids) for t, r, o in zip(texts, ref_encs, our_encs) if _fields(r) != _fields(o)]
    assert not bad, f"{what}: {len(bad)} of {len(texts)} differ; first: " + "; ".join(
        f"{t[:60]!r}: ref {r[:12]} ours {o[:12]}" for t, r, o in bad[:3])


@pytest.mark.heavy
def test_corpus_parity(pair, corpus):
    """Every line of the 100k-line real corpus: the same ids, type ids, masks; and the same
    decoded text (with and without special tokens) for every 4th line."""
    name, ref, ours = pair
    assert len(corpus) >= 100_000
    ref_encs = ref.encode_batch(corpus)
    _assert_same(ref_encs, ours.encode_batch(corpus), corpus, name)
    ids = [e.ids for e in ref_encs[::4]]
    for skip in (True, False):
        want = ref.decode_batch(ids, skip_special_tokens=skip)
        got = ours.decode_batch(ids, skip_special_tokens=skip)
        bad = [(w, g) for w, g in zip(want, got) if w != g]
        assert not bad, f"{name}: {len(bad)} decodes differ (skip_special_tokens={skip}); first {bad[0]!r}"


#: per-line corners: added tokens in the text (one with spaces around), control characters and tabs
#: (BERT's cleaning maps or drops them), upper case, accents, text Unigram does not know, leading and
#: trailing space, nothing at all
PER_LINE_CORNERS = ["", " ", "\t", "[CLS] Hello [SEP] world", "<|endoftext|>x y", " <|endoftext|> z", "ቱኒዚያ",
                    "A\tB\x00C\x1fD\r\nE", "  lead trail  ", "ÀÉÎ Ünïcode ﬁ", "MiXeD CaSe 123", "\u3000\u4e2d\u6587 text",
                    "a" * 300]


def test_per_line_encode_matches_the_reference(pair, corpus):
    """`encode` of one text takes its own short path (no batch lists; ASCII text normalised by one
    translation table): the same ids, type ids, masks and tokens as the reference's `encode` on
    every 50th corpus line and the corners, with and without special tokens and truncation."""
    name, ref, ours = pair
    texts = corpus[::50] + PER_LINE_CORNERS
    for special in (True, False):
        for t in texts:
            r, o = ref.encode(t, add_special_tokens=special), ours.encode(t, add_special_tokens=special)
            assert _fields(o) == _fields(r) and o.tokens == r.tokens, f"{name} {t[:60]!r} special={special}"
    ref.enable_truncation(7)
    ours.enable_truncation(7)
    try:
        for t in texts[:300] + PER_LINE_CORNERS:
            assert _fields(ours.encode(t)) == _fields(ref.encode(t)), f"{name} {t[:60]!r} truncated to 7"
    finally:
        ref.no_truncation()
        ours.no_truncation()


def test_ascii_normaliser_table_is_the_steps(pair):
    """The ASCII translation table gives what the normaliser steps give, on every ASCII character
    alone and in random ASCII strings."""
    name, _, ours = pair
    if ours._ascii_norm is None:
        return
    rng = random.Random(3)
    texts = [chr(c) for c in range(128)] + ["".join(chr(rng.randrange(128)) for _ in range(rng.randrange(40)))
                                           for _ in range(2000)]
    for t in texts:
        assert ours._normalize(t) == ours._normalize_steps(t), f"{name} {t!r}"


def test_translated_runs_are_the_steps(pair, corpus, monkeypatch):
    """Non-ASCII text goes through runs of per-character normaliser steps as one ``str.translate``
    (`Tokenizer._translated_runs`): the same text and left-strip flag as the steps one by one, on
    every code point up to U+FFFF alone, random strings over all planes and every 20th corpus line;
    also with the character table capped at 4 entries (characters past the cap are recomputed)."""
    from nac.tokenizer_vm import vm

    name, _, ours = pair
    rng = random.Random(5)
    texts = ([chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF] + corpus[::20]
             + ["".join(chr(rng.choice([rng.randrange(0x300), rng.randrange(0xD800), rng.randrange(0xE000, 0x110000)]))
                        for _ in range(rng.randrange(40))) for _ in range(3000)])
    assert all(ours._normalize(t) == ours._normalize_steps(t) for t in texts), name
    monkeypatch.setattr(vm._CharMap, "MAX_ENTRIES", 4)
    capped = type(ours)(ours.program)
    assert all(capped._normalize(t) == capped._normalize_steps(t) for t in texts[::11]), name
    tables = [fn.__defaults__[0] for fn in capped._norm_runs
              if fn.__defaults__ and isinstance(fn.__defaults__[0], vm._CharMap)]
    assert all(len(t) <= 4 for t in tables), name
    if name == "wordpiece":  # BERT's normaliser: clean + CJK padding, NFD, accent drop + lowercase
        assert len(tables) == 2 and len(capped._norm_runs) == 3


def test_word_cache_changes_no_id(pair, corpus, monkeypatch):
    """BPE keeps each word's ids in a per-thread cache (`kernels.word_cache`). With a
    two-slot cache (every other word replaces the last), with none, and with the default one, the
    ids are the reference's, per line and in a batch; words longer than the cache's 16 code points
    and words of more than 16 ids are among them."""
    from nac.tokenizer_vm import Tokenizer, kernels

    name, ref, ours = pair
    texts = corpus[::13] + ["x" * 40, "supercalifragilisticexpialidocious " * 3, "\u4e2d\u6587" * 12]
    want = [e.ids for e in ref.encode_batch(texts)]
    for slots in (2, 0, Tokenizer.WORD_CACHE_SLOTS):
        monkeypatch.setattr(Tokenizer, "WORD_CACHE_SLOTS", slots)
        tok = Tokenizer(ours.program)
        assert [e.ids for e in tok.encode_batch(texts)] == want, f"{name}, {slots} slots, batch"
        assert [tok.encode(t).ids for t in texts] == want, f"{name}, {slots} slots, per line"
        if slots and name in ("gpt2", "roberta", "sp_bpe"):
            assert (tok._word_cache()[:, 0] >= 0).any(), f"{name}: the cache was never filled"
    with pytest.raises(ValueError, match="power of two"):
        kernels.word_cache(3)


def test_one_tokenizer_from_many_threads(pair, corpus):
    """One `Tokenizer` encoding from four threads at once (each with its own word cache) gives
    every thread the ids the reference gives."""
    from concurrent.futures import ThreadPoolExecutor

    from nac.tokenizer_vm import Tokenizer

    name, ref, ours = pair
    tok = Tokenizer(ours.program)
    chunks = [corpus[i::997][:150] for i in range(8)]
    want = [[e.ids for e in ref.encode_batch(c)] for c in chunks]

    def work(k):
        c = chunks[k]
        return [tok.encode(t).ids for t in c] if k % 2 else [e.ids for e in tok.encode_batch(c)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(work, range(8)))
    assert got == want, name


def test_encode_batch_split_over_the_engine_threads(pair, corpus, monkeypatch):
    """A large `encode_batch` runs one compiled call per engine thread on parts of about equal
    code points (`Tokenizer._parts_of`): with three threads and parts of 64+ code points, the
    same ids as the reference, and the parts cover the batch in order."""
    import numpy as np

    from nac.tokenizer_vm import Tokenizer, vm

    name, ref, ours = pair
    monkeypatch.setattr(vm, "num_threads", lambda: 3)
    monkeypatch.setattr(Tokenizer, "PARALLEL_MIN_CHARS", 64)
    tok = Tokenizer(ours.program)
    texts = corpus[::11]
    parts = tok._parts_of(np.array([len(t) for t in texts], np.int64))
    assert len(parts) == 4 and parts[0] == 0 and parts[-1] == len(texts) and parts == sorted(parts), parts
    assert tok._parts_of(np.array([5, 5], np.int64)) == [0, 2]  # too little text to split
    assert [e.ids for e in tok.encode_batch(texts)] == [e.ids for e in ref.encode_batch(texts)], name


def test_one_call_path_and_staged_path_agree(pair, corpus):
    """Programs whose pre-tokeniser runs on arrays encode a batch in one compiled call
    (`kernels.encode_*`); it gives exactly what the stage-by-stage path gives (which programs with
    a Python regex step still take), on every 7th corpus line, per line and in one batch."""
    name, _, ours = pair
    texts = corpus[::7]
    one_call = ours._fused is not None and not ours._pre_str
    assert one_call == (name != "regex_split")  # PRE.REGEX runs in Python
    if not one_call:
        return
    fused = [e.ids for e in ours.encode_batch(texts)]
    per_line = [ours.encode(t).ids for t in texts[:2000]]
    keep, ours._fused = ours._fused, None
    try:
        staged = [e.ids for e in ours.encode_batch(texts)]
    finally:
        ours._fused = keep
    assert fused == staged and per_line == staged[:2000]


def test_every_vocabulary_entry(pair):
    """Each vocabulary string encodes to the same ids, and each id decodes to the same text."""
    name, ref, ours = pair
    n = ref.get_vocab_size()
    assert ours.get_vocab_size() == n
    tokens = [ref.id_to_token(i) for i in range(n)]
    assert [ours.id_to_token(i) for i in range(n)] == tokens
    texts = [t for t in tokens if t]
    _assert_same(ref.encode_batch(texts), ours.encode_batch(texts), texts, f"{name} vocabulary")
    for skip in (True, False):
        assert ours.decode_batch([[i] for i in range(n)], skip) == ref.decode_batch([[i] for i in range(n)], skip)


def test_every_code_point(pair):
    """Every code point up to U+FFFF (surrogates excluded), and a sample of 4,000 beyond, alone and
    between words, encodes and decodes as the reference does."""
    name, ref, ours = pair
    rng = random.Random(0)
    cps = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF] + rng.sample(range(0x10000, sys.maxunicode + 1), 4000)
    alone = [chr(c) for c in cps]
    _assert_same(ref.encode_batch(alone), ours.encode_batch(alone), alone, f"{name} single code points")
    ctx = [f"a{chr(c)}b {chr(c)}{chr(c)} x" for c in cps[::7]]
    ref_encs = ref.encode_batch(ctx)
    _assert_same(ref_encs, ours.encode_batch(ctx), ctx, f"{name} code points in context")
    ids = [e.ids for e in ref_encs]
    assert ours.decode_batch(ids) == ref.decode_batch(ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_random_unicode(pairs, text):
    """Random Unicode strings (all planes, combining marks, controls, whitespace): same ids and decode."""
    for name, (ref, ours) in pairs.items():
        r, o = ref.encode(text), ours.encode(text)
        assert _fields(r) == _fields(o), f"{name}: {text!r}"
        assert ours.decode(r.ids) == ref.decode(r.ids), f"{name}: decode of {text!r}"


GLUED = {
    "wordpiece": ["hello[SEP]world", "[CLS]x[SEP] y", "[CLS] leading", " [MASK]", "[MASK][MASK]", "a [PAD]b", "[cls] lower",
                  "The capital of France is [MASK].", "x[UNK]y", "[SEP]", "  [SEP]  "],
    "gpt2": ["hello<|endoftext|>world", "<|endoftext|> leading space", "<|endoftext|><|endoftext|>", " <|endoftext|>",
             "a<|endoftext|> b", "<|endoftext|>\nnext", "<|endoftext", "<|ENDOFTEXT|>"],
    "roberta": ["The capital of France is <mask>.", "The capital of France is<mask>.", "x   <mask>   y", "<s>hello</s> world",
                "<mask><mask>", "<pad>x", " <s>"],
    "unigram": ["hello</s>world", "</s> leading", "a </s> b", "</s></s>", "<unk>x", "<pad> y"],
    "sp_bpe": ["hello</s>world", "<s> leading", "<s>x</s> y", " <s>", "<unk>", "<0x41>B"],
    "regex_split": ["hello<|endoftext|>world", "<|endoftext|> leading space", "I'M here\r\n\r\n12345 x",
                    " <|endoftext|>"],
}


def test_text_glued_to_special_tokens(pair):
    """Special tokens touching text, spaces after them, repeated, partial and case-changed: the most
    reported mismatch between runtimes (llama.cpp #4772, #23840, #11054)."""
    name, ref, ours = pair
    texts = GLUED[name]
    _assert_same(ref.encode_batch(texts), ours.encode_batch(texts), texts, name)
    for add in (False,):
        for t in texts:
            assert ours.encode(t, add_special_tokens=add).ids == ref.encode(t, add_special_tokens=add).ids, t


def test_pairs_truncation_padding(pair, corpus):
    """Pair inputs, every truncation strategy and direction, and padding (right/left, multiple-of)."""
    name, ref, ours = pair
    rng = random.Random(1)
    pairs = [(rng.choice(corpus), rng.choice(corpus)) for _ in range(300)]
    _assert_same(ref.encode_batch(pairs), ours.encode_batch(pairs), [a for a, _ in pairs], f"{name} pairs")
    for strategy in ("longest_first", "only_first", "only_second"):
        for direction in ("right", "left"):
            ref.enable_truncation(24, strategy=strategy, direction=direction)
            ours.enable_truncation(24, strategy=strategy, direction=direction)
            for a, b in pairs[:100]:
                try:
                    want = ref.encode(a, b)
                except Exception:
                    with pytest.raises(Exception):
                        ours.encode(a, b)
                    continue
                assert _fields(ours.encode(a, b)) == _fields(want), (strategy, direction, a[:40], b[:40])
    ref.enable_truncation(16)
    ours.enable_truncation(16)
    long = [t * 50 for t in corpus[:50]]
    _assert_same(ref.encode_batch(long), ours.encode_batch(long), long, f"{name} truncated long texts")
    for direction, multiple in (("right", None), ("left", 8)):
        pad = ref.token_to_id("<pad>") if ref.token_to_id("<pad>") is not None else 0
        ref.enable_padding(direction=direction, pad_id=pad, pad_to_multiple_of=multiple)
        ours.enable_padding(direction=direction, pad_id=pad, pad_to_multiple_of=multiple)
        texts = corpus[100:140]
        _assert_same(ref.encode_batch(texts), ours.encode_batch(texts), texts, f"{name} padded {direction}")
        ref.no_padding()
        ours.no_padding()
    ref.no_truncation()
    ours.no_truncation()


@pytest.mark.parametrize("behavior", ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"])
def test_split_behaviours(pairs, corpus, behavior):
    """Every delimiter behaviour, on the Numba splits (Punctuation, a literal Split) and on the
    string-level regex Split, inverted too, over MiniLM's vocabulary."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    from nac.tokenizer_vm import Tokenizer as Tisa, compile_tokenizer

    base = pairs["wordpiece"][0]
    lines = corpus[:3000]
    for pre in ([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior)],
                [pre_tokenizers.Split("e", behavior, invert=True), pre_tokenizers.WhitespaceSplit()],
                [pre_tokenizers.Split(Regex(r"\d+|[,.;]"), behavior), pre_tokenizers.WhitespaceSplit()],
                [pre_tokenizers.Split(Regex(r"[aeiou]+"), behavior, invert=True), pre_tokenizers.Digits(False)]):
        ref = Tokenizer.from_str(base.to_str())
        ref.pre_tokenizer = pre_tokenizers.Sequence(pre)
        ours = Tisa(compile_tokenizer(ref.to_str()))
        _assert_same(ref.encode_batch(lines), ours.encode_batch(lines), lines, f"{behavior} {pre}")


def test_empty_and_whitespace_only(pair):
    name, ref, ours = pair
    texts = ["", " ", "\t\n", "\u00a0\u3000", "\r\n\r\n", " " * 50]
    _assert_same(ref.encode_batch(texts), ours.encode_batch(texts), texts, name)
    assert ours.decode([]) == ref.decode([])
