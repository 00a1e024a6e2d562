"""The TISA program as data: storage, disassembly, and the errors for bad tokenizers and bad text."""
from __future__ import annotations

import json

import numpy as np
import pytest

import nac
from nac.tokenizer_vm import Program, Tokenizer, compile_tokenizer, load_tokenizer, tokenizer_section


@pytest.fixture(scope="module")
def bert_json(pairs) -> dict:
    return json.loads(pairs["wordpiece"][0].to_str())


def test_bytes_round_trip_is_exact(pairs):
    ref, ours = pairs["gpt2"]
    prog = ours.program
    again = Program.from_bytes(prog.to_bytes())
    assert again.code == prog.code and again.added == prog.added
    assert again.tables.keys() == prog.tables.keys()
    for k, v in prog.tables.items():
        assert again.tables[k].dtype == v.dtype and np.array_equal(again.tables[k], v), k


def test_disassembly_lists_instructions_and_tables(pairs):
    text = pairs["wordpiece"][1].program.disassemble()
    for needle in ("ADDED.SPLIT", "NORM.DROP", "NORM.NFD", "NORM.LOWER", "PRE.SPLIT", "MODEL.WORDPIECE",
                   "POST.TEMPLATE", "DEC.WORDPIECE", "keys_hash", "class_blocks", "total"):
        assert needle in text, needle
    assert "MODEL.BPE" in pairs["gpt2"][1].program.disassemble()
    assert "MODEL.UNIGRAM" in pairs["unigram"][1].program.disassemble()


def test_section_metadata(pairs):
    blob, meta = tokenizer_section(pairs["unigram"][1])
    fp = meta.pop("fingerprint")
    assert meta == {"format": "tisa-1", "model": "unigram", "vocab_size": pairs["unigram"][0].get_vocab_size()}
    from nac.tokenizer_vm import FINGERPRINT_TEXT

    assert fp["ids"] == pairs["unigram"][0].encode(FINGERPRINT_TEXT).ids  # the reference's own ids
    assert load_tokenizer(blob, "tisa-1").encode("hello world").ids == pairs["unigram"][0].encode("hello world").ids


@pytest.mark.parametrize("blob", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", b"garbage" * 10])
def test_corrupt_program_is_a_format_error(blob):
    with pytest.raises(nac.NacFormatError, match="tokenizer"):
        Program.from_bytes(blob)


def test_unknown_instruction_is_a_format_error(pairs):
    prog = pairs["wordpiece"][1].program
    bad = Program([*prog.code, {"op": "MODEL.MAGIC"}], prog.tables, prog.added)
    with pytest.raises(nac.NacFormatError, match="MODEL.MAGIC"):
        Program.from_bytes(bad.to_bytes())


def test_unknown_section_format(pairs):
    with pytest.raises(nac.NacError, match="tisa-9"):
        load_tokenizer(b"", "tisa-9")


def _mutate(doc: dict, path: str, value) -> dict:
    doc = json.loads(json.dumps(doc))
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[keys[-1]] = value
    return doc


@pytest.mark.parametrize("path,value,message", [
    ("normalizer", {"type": "ByteLevel"}, r"normalizer: normaliser type 'ByteLevel'"),
    ("pre_tokenizer", {"type": "UnicodeScripts"}, r"pre_tokenizer: pre-tokeniser type 'UnicodeScripts'"),
    ("model.type", "Magic", r"model: model type 'Magic'"),
    ("model.unk_token", "[NOPE]", r"unk_token '\[NOPE\]' is not in the vocabulary"),
    ("post_processor", {"type": "Whatever"}, r"post_processor: post-processor type 'Whatever'"),
    ("decoder", {"type": "Nope"}, r"decoder: decoder type 'Nope'"),
    ("normalizer", {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"nope": 1}]},
     r"normalizer.normalizers\[1\]: expected an object with a 'type'"),
])
def test_unsupported_components_fail_at_compile_time(bert_json, path, value, message):
    with pytest.raises(nac.NacError, match=message):
        compile_tokenizer(_mutate(bert_json, path, value), name="bert")


def test_bpe_errors(pairs):
    doc = json.loads(pairs["gpt2"][0].to_str())
    with pytest.raises(nac.NacError, match="dropout"):
        compile_tokenizer(_mutate(doc, "model.dropout", 0.1))
    merges = doc["model"]["merges"]
    with pytest.raises(nac.NacError, match=r"model.merges\[0\]: merge .* not in the vocabulary"):
        compile_tokenizer(_mutate(doc, "model.merges", ["zzzq qqqz"] + merges[1:]))
    regex_after_bytes = {"type": "Sequence", "pretokenizers": [{"type": "ByteLevel", "add_prefix_space": False},
                                                               {"type": "Split", "pattern": {"Regex": "a+"},
                                                                "behavior": "Isolated", "invert": False}]}
    with pytest.raises(nac.NacError, match="regular expression after a character-level"):
        compile_tokenizer(_mutate(doc, "pre_tokenizer", regex_after_bytes))


def test_not_a_tokenizer(tmp_path):
    with pytest.raises(nac.NacError, match="does not exist"):
        compile_tokenizer(tmp_path / "missing.json")
    with pytest.raises(nac.NacError, match="not valid JSON"):
        compile_tokenizer(b"{not json")
    with pytest.raises(nac.NacError, match="no 'model' object"):
        compile_tokenizer({"version": "1.0"})


def test_bad_text_inputs(pairs):
    ref, ours = pairs["wordpiece"]
    with pytest.raises(nac.NacInputError, match="lone surrogate at position 3"):
        ours.encode("abc\ud800def")
    with pytest.raises(nac.NacInputError, match="not valid UTF-8"):
        ours.encode(b"abc\xff")
    with pytest.raises(nac.NacInputError, match="expected text"):
        ours.encode(42)
    assert ours.encode("héllo".encode()).ids == ref.encode("héllo").ids  # UTF-8 bytes are text
    with pytest.raises(nac.NacInputError, match="input 1"):
        ours.encode_batch(["fine", None])


def test_ids_outside_the_vocabulary_are_refused_in_decode(pairs):
    """The reference skips them silently; NAC names them (a '' from a bad id hides the bug)."""
    ref, ours = pairs["gpt2"]
    assert ours.decode([31373, 10, 995]) == ref.decode([31373, 10, 995])
    with pytest.raises(nac.NacInputError, match=r"ids\[2\] = 99999999 is outside the vocabulary \[0, 50257\)"):
        ours.decode([31373, 10, 99999999, 995])


def test_vocabulary_lookups(pairs):
    ref, ours = pairs["roberta"]
    for t in ("<mask>", "Ġthe", "hello", "not-a-token-at-all"):
        assert ours.token_to_id(t) == ref.token_to_id(t)
    assert ours.id_to_token(10**9) is None and ref.id_to_token(10**9) is None


def test_fingerprint_is_checked_at_export_and_at_load(pairs, tmp_path, monkeypatch):
    """Issue 12, item 5: as llama.cpp's converter does, the compiled tokenizer must give the
    reference's ids on a fixed torture text at export, and a file's tokenizer must reproduce the
    ids recorded there when it is loaded."""
    import nac.tokenizer_vm as tv
    from fuzz.nacfuzz import join_container, split_container
    from nac.format.container import METADATA, write_nac
    from nac.format.graph import Graph

    source = pairs["gpt2"][0].to_str()
    g = Graph()
    x = g.add_value("x", "float32", (2,))
    g.inputs.append(x)
    g.outputs.append(x)
    blob, info = tokenizer_section(source)
    path = write_nac(tmp_path / "t.nac", g, {"tokenizer": info}, tokenizer=blob)
    assert nac.load(path).tokenizer.encode("hello").ids == pairs["gpt2"][0].encode("hello").ids

    sections = split_container(path.read_bytes())  # a file whose recorded fingerprint differs
    for sec in sections:
        if sec[0] == METADATA:
            meta = json.loads(sec[2])
            meta["tokenizer"]["fingerprint"]["ids"][3] += 1
            sec[2] = json.dumps(meta).encode()
    bad = tmp_path / "bad.nac"
    bad.write_bytes(join_container(sections))
    with pytest.raises(nac.NacFormatError, match="does not reproduce the fingerprint recorded at export"):
        nac.load(bad).tokenizer

    real = tv.fingerprint  # a VM that disagrees with the reference is refused at export
    monkeypatch.setattr(tv, "fingerprint", lambda tok: {**real(tok), "ids": real(tok)["ids"][:-1] + [0]})
    with pytest.raises(nac.NacError, match="disagrees with Hugging Face tokenizers on the fingerprint text"):
        tokenizer_section(source)
