"""Unigram ties (issue 12): segmentations made of the same pieces in another order have equal
scores up to the last bit, so which one wins depends on exactly how the scores were read.
``tokenizers`` reads a tokenizer.json's floats with serde_json, not always correctly rounded;
TISA's compiler reads them the same way (`serde_f64`). A property test over vocabularies trained
on different corpora and sizes, on texts full of repeated-symbol runs where ties are common."""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nac.tokenizer_vm.compiler import serde_f64

tokenizers = pytest.importorskip("tokenizers", reason="the reference is Hugging Face tokenizers")

SYMBOLS = "-*)(=#_.~!?"


def _runs(rng: random.Random, n: int) -> list[str]:
    return [" ".join("".join(rng.choice(SYMBOLS) * rng.randint(1, 40) for _ in range(rng.randint(1, 3)))
                     for _ in range(rng.randint(1, 4))) for _ in range(n)]


@pytest.fixture(scope="module")
def vocabularies(corpus):
    """Five Unigram tokenizers: different slices of the corpus (Latin, Greek, Cyrillic lines) plus
    symbol runs, vocabulary sizes 1,500 to 5,000; each as the reference loads its tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from nac.tokenizer_vm import Tokenizer as Tisa, compile_tokenizer

    latin = [t for t in corpus if max(map(ord, t), default=0) < 0x0530]
    rng = random.Random(0)
    out = []
    for k, (size, stride) in enumerate([(1500, 7), (2500, 5), (3500, 11), (5000, 3), (2000, 13)]):
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(latin[k::stride][:4000] + _runs(rng, 600), trainers.UnigramTrainer(
            vocab_size=size, special_tokens=["<unk>"], unk_token="<unk>", max_piece_length=16))
        text = tok.to_str()
        out.append((Tokenizer.from_str(text), Tisa(compile_tokenizer(text))))
    return out


@pytest.mark.heavy
def test_corpus_and_symbol_runs(vocabularies, corpus):
    rng = random.Random(1)
    texts = corpus[5::25] + _runs(rng, 3000)
    for ref, ours in vocabularies:
        want = [e.ids for e in ref.encode_batch(texts)]
        got = [e.ids for e in ours.encode_batch(texts)]
        bad = [t for t, a, b in zip(texts, want, got) if a != b]
        assert not bad, f"{len(bad)} of {len(texts)} differ; first {bad[0][:60]!r}"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SYMBOLS + "ab"), st.integers(1, 40)), min_size=1, max_size=5))
def test_generated_runs(vocabularies, runs):
    text = "".join(c * n for c, n in runs)
    for ref, ours in vocabularies:
        assert ours.encode(text).ids == ref.encode(text).ids, text


@pytest.mark.parametrize("text", ["-1.4305892765185781", "-7.4759029005195305", "0.1", "1e-7", "-0", "123456789012345678901234",
                                  "1.00000000000000000000000001", "2.5E+3", "1e400", "4.9e-324", "18446744073709551616.5"])
def test_serde_f64_reads_numbers_as_serde_json(text):
    """Against tokenizers itself: a Unigram score written as ``text`` and read back."""
    from tokenizers import Tokenizer

    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": None, "post_processor": None, "decoder": None,
           "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", "SCORE"]], "byte_fallback": False}}
    src = json.dumps(doc).replace('"SCORE"', text)
    try:
        want = json.loads(Tokenizer.from_str(src).to_str())["model"]["vocab"][1][1]
    except Exception:
        with pytest.raises(ValueError):
            serde_f64(text)
        return
    assert serde_f64(text) == want
