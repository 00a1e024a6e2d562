"""Issue 15: the SentencePiece ``Precompiled`` normaliser (T5's, ALBERT's, XLM-R's tokenizer.json).

SentencePiece models are trained here with the ``sentencepiece`` package (``nmt_nfkc`` rules, the
default) and converted to tokenizer.json by transformers' own converters (T5 and ALBERT style);
TISA must give the ids of Hugging Face ``tokenizers`` on every line of the multilingual corpus,
and the same offsets on a sample."""
from __future__ import annotations

import base64
import json
import types

import pytest

import nac
from nac.tokenizer_vm import Program, Tokenizer, compile_tokenizer

spm = pytest.importorskip("sentencepiece", reason="needs sentencepiece (pip install 'nac[test]')")
pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")


@pytest.fixture(scope="module")
def spm_model(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    lines = [c for c in corpus[::5] if "\n" not in c and "\r" not in c]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(d / "m"), vocab_size=16000,
                                   model_type="unigram", normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1,
                                   unk_id=2, bos_id=-1, character_coverage=0.98, minloglevel=2, num_threads=2)
    return d / "m.model"


def _converted(model_file, style: str):
    """tokenizers.Tokenizer as transformers converts a SentencePiece model of ``style``."""
    from transformers.convert_slow_tokenizer import AlbertConverter, T5Converter

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    original = types.SimpleNamespace(vocab_file=str(model_file), _extra_ids=0, legacy=True, add_prefix_space=True,
                                     convert_tokens_to_ids=sp.piece_to_id, keep_accents=False, do_lower_case=True)
    converter = {"t5": T5Converter, "albert": AlbertConverter}[style]
    return converter(original).converted()


@pytest.fixture(scope="module", params=["t5", "albert"])
def pair(request, spm_model):
    ref = _converted(spm_model, request.param)
    doc = json.loads(ref.to_str())
    assert "Precompiled" in json.dumps(doc["normalizer"])
    ours = Tokenizer(Program.from_bytes(compile_tokenizer(doc).to_bytes()))
    return request.param, ref, ours


@pytest.mark.heavy
def test_ids_match_tokenizers_on_the_corpus(pair, corpus):
    """T5 style on every line of the corpus; ALBERT style (lowercased, quotes replaced first) on a third."""
    style, ref, ours = pair
    weird = ["a\r\nb", "e\u0301 x\u0308\u0301 \u1100\u1161\u11a8", "\U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469",
             "\uff21\uff22\u3000\uff41 \u2460\u2461 \ufb01", "\u0915\u094d\u0937 \u0e01\u0e33", "x\u200b\ufeffy"]
    lines = (corpus if style == "t5" else corpus[::3]) + weird
    got = [e.ids for e in ours.encode_batch(lines)]
    want = [e.ids for e in ref.encode_batch(lines)]
    bad = [k for k, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, (len(bad), lines[bad[0]][:80], got[bad[0]][:20], want[bad[0]][:20])


def test_offsets_match_tokenizers(pair, corpus):
    _, ref, ours = pair
    lines = corpus[5::400] + ["\uff21\uff22 e\u0301 \u2460 a\r\nb  c"]
    for line in lines:
        got, want = ours.encode(line), ref.encode(line)
        assert got.ids == want.ids
        assert got.offsets == [tuple(o) for o in want.offsets], line[:80]


def test_rules_are_those_of_the_trie(spm_model):
    """Every rule read from the trie applies as tokenizers' normaliser applies it to that key alone."""
    from nac.tokenizer_vm.precompiled import Charsmap, read_charsmap

    doc = json.loads(_converted(spm_model, "t5").to_str())
    node = next(n for n in doc["normalizer"]["normalizers"] if n["type"] == "Precompiled")
    rules = read_charsmap(node["precompiled_charsmap"], "test")
    assert len(rules) > 1000
    from tokenizers.normalizers import Precompiled

    ref = Precompiled(base64.b64decode(node["precompiled_charsmap"]))
    ours = Charsmap(rules)
    keys = sorted(rules)[::50]
    assert [ours.normalize(k) for k in keys] == [ref.normalize_str(k) for k in keys]


@pytest.mark.parametrize("charsmap, message", [
    ("not base64!", "not base64"), (base64.b64encode(b"\x01").decode(), "too short"), ("", "too short"),
    (None, "base64 string"),
    (base64.b64encode((400).to_bytes(4, "little") + b"\0" * 8).decode(), "does not fit"),
])
def test_malformed_charsmaps_are_refused(charsmap, message):
    doc = {"version": "1.0", "normalizer": {"type": "Precompiled", "precompiled_charsmap": charsmap},
           "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}}
    with pytest.raises(nac.NacError, match=message):
        compile_tokenizer(doc)
