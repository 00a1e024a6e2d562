"""Issue 12, item 5: the ``Nmt`` normaliser (the default of tokenizers' SentencePiece Unigram
tokenizers, which ALBERT- and XLM-R-style files use). Its character sets are checked against
tokenizers over every code point, and a SentencePieceUnigramTokenizer trained on the corpus
gives identical ids on the corpus and on text full of the characters Nmt touches."""
from __future__ import annotations

import json

import pytest

tokenizers = pytest.importorskip("tokenizers", reason="needs tokenizers (pip install 'nac[export]')")


def test_character_sets_match_tokenizers():
    from nac.tokenizer_vm.compiler import NMT_DROP, NMT_SPACE

    nmt = tokenizers.normalizers.Nmt()
    drop, space = set(), set()
    for c in range(0x110000):
        if 0xD800 <= c <= 0xDFFF:
            continue
        out = nmt.normalize_str(chr(c))
        if out == "":
            drop.add(c)
        elif out == " " and c != 0x20:
            space.add(c)
        else:
            assert out == chr(c), hex(c)
    assert drop == set(NMT_DROP) and space == set(NMT_SPACE)


@pytest.fixture(scope="module")
def sp_unigram(corpus):
    from tokenizers.implementations import SentencePieceUnigramTokenizer

    ref = SentencePieceUnigramTokenizer()
    ref.train_from_iterator(corpus[::7], vocab_size=12000, special_tokens=["<unk>", "<pad>"], unk_token="<unk>",
                            show_progress=False)
    assert "Nmt" in ref.to_str()
    return tokenizers.Tokenizer.from_str(ref.to_str())


def test_sentencepiece_unigram_with_nmt(sp_unigram, corpus):
    from nac.tokenizer_vm import Program, Tokenizer, compile_tokenizer

    ours = Tokenizer(Program.from_bytes(compile_tokenizer(json.loads(sp_unigram.to_str())).to_bytes()))
    weird = ["a\tb\nc\x0bd\x01e\x7ff", "zero\u200bwidth\u200djoin\ufeffbom\ufffdx", "line\u2028sep\u2029par",
             "ogham\u1680space  two   spaces", "\x08\x1f\x8f\x9f only controls", "▁already▁meta"]
    lines = corpus[1::5] + weird
    got = [e.ids for e in ours.encode_batch(lines)]
    want = [e.ids for e in sp_unigram.encode_batch(lines)]
    bad = [k for k, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, (len(bad), lines[bad[0]][:80], got[bad[0]][:20], want[bad[0]][:20])
