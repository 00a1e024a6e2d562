"""Encoder-decoder generation (issue 15): T5 and BART exported as two methods of one file,
greedy and beam search token-for-token identical to transformers' ``generate`` on 20 inputs per
model, the logits of every greedy step within 1e-4 of the logit scale; `nac run`, the pipeline
and `Model.generate` agree; the multi-method file format."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import nac
from conftest import nac_main
from nac.apps.generate import text2text

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
import torch  # noqa: E402

from nac.apps.seq2seq import seq2seq  # noqa: E402
from nac.compile.export import compile_methods  # noqa: E402
from nac.format.container import write_nac  # noqa: E402


def configs():
    t5 = dict(d_kv=8, num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
              relative_attention_num_buckets=8, relative_attention_max_distance=20)
    yield "t5-relu-tied", transformers.T5Config(vocab_size=120, d_model=32, d_ff=64, num_layers=2,
                                                num_decoder_layers=2, **t5)
    # T5 v1.1 / flan-T5 style: gated GELU, untied output layer, three layers (transformers 5.24's own
    # generate fails on a decoder deeper than the encoder: its cache is sized by the encoder). Smaller
    # initial weights: unscaled untied logits at the default init make one token certain to float
    # precision, and beams then tie at the last bit (transformers' own batch and single runs disagree).
    yield "t5-gated-untied", transformers.T5Config(vocab_size=150, d_model=48, d_ff=96, num_layers=3,
                                                   num_decoder_layers=3, feed_forward_proj="gated-gelu",
                                                   tie_word_embeddings=False, initializer_factor=0.2, **t5)
    bart = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
                max_position_embeddings=64)
    yield "bart-small", transformers.BartConfig(vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2,
                                                encoder_attention_heads=4, decoder_attention_heads=4,
                                                encoder_ffn_dim=64, decoder_ffn_dim=64, **bart)
    yield "bart-scaled-3layer", transformers.BartConfig(vocab_size=140, d_model=48, encoder_layers=3,
                                                        decoder_layers=3, encoder_attention_heads=6,
                                                        decoder_attention_heads=6, encoder_ffn_dim=96,
                                                        decoder_ffn_dim=96, scale_embedding=True,
                                                        activation_function="relu", **bart)


@pytest.fixture(scope="module", params=list(configs()), ids=[n for n, _ in configs()])
def s2s(request, tmp_path_factory):
    name, cfg = request.param
    torch.manual_seed(0)
    model = transformers.AutoModelForSeq2SeqLM.from_config(cfg).eval()
    job = seq2seq(model, name)
    graphs, meta = compile_methods(job.methods, metadata=job.metadata)
    path = write_nac(tmp_path_factory.mktemp(name) / "s2s.nac", graphs, meta)
    return model, nac.load(path)


def _inputs(model, n=20, seed=0):
    """n encoder inputs of 3..14 tokens (EOS-terminated), right-padded with the mask transformers takes."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    rows = [list(rng.integers(3, cfg.vocab_size, rng.integers(2, 14))) + [cfg.eos_token_id] for _ in range(n)]
    width = max(map(len, rows))
    ids = np.full((n, width), cfg.pad_token_id, np.int64)
    mask = np.zeros((n, width), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def _reference(model, ids, mask, **kw):
    with torch.no_grad():
        return model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False, **kw)


def test_greedy_matches_transformers_with_logits(s2s):
    model, m = s2s
    ids, mask = _inputs(model)
    got, logits = m.generate(ids, attention_mask=mask, max_new_tokens=16, return_logits=True)
    ref = _reference(model, ids, mask, max_new_tokens=16, output_logits=True, return_dict_in_generate=True)
    assert got.tolist() == ref.sequences.tolist()
    want = torch.stack(ref.logits).numpy()
    assert logits.shape == want.shape
    assert np.abs(logits - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("kw", [dict(num_beams=4), dict(num_beams=4, length_penalty=0.6, no_repeat_ngram_size=2),
                                dict(num_beams=3, early_stopping=True, num_return_sequences=2, min_new_tokens=3),
                                dict(num_beams=2, early_stopping="never", repetition_penalty=1.4)],
                         ids=["beams4", "penalties", "return2", "never"])
def test_beam_search_matches_transformers(s2s, kw):
    model, m = s2s
    ids, mask = _inputs(model, seed=len(kw))
    got = m.generate(ids, attention_mask=mask, max_new_tokens=12, **kw)
    want = _reference(model, ids, mask, max_new_tokens=12, **kw)
    assert got.tolist() == want.tolist()


def test_ragged_lists_are_right_padded(s2s):
    """Lists of different lengths give each input's own output (the encoder input is right-padded)."""
    model, m = s2s
    rows = [[5, 6, 7, 8, model.config.eos_token_id], [9, 10, model.config.eos_token_id]]
    got = m.generate(rows, max_new_tokens=8, num_beams=2)
    for row, out in zip(rows, got):
        want = _reference(model, np.array([row]), np.ones((1, len(row)), np.int64), max_new_tokens=8, num_beams=2)[0]
        assert out[:len(want)].tolist() == want.tolist()


def test_multi_method_file(s2s, tmp_path):
    """Format 1.1: two methods over one parameter section; each runs like its own graph; a
    reader that knows only 1.0 refuses the methods section rather than running half a model."""
    model, m = s2s
    assert list(m.methods) == ["encode", "decode"] and m.methods["encode"] is m
    assert m.file.version == (1, 1)
    assert m.input_names == ["input_ids", "attention_mask"]
    dec = m.methods["decode"]
    assert dec.output_names == ["logits", "keys", "values"]
    assert m.generation_config.is_encoder_decoder
    names = [s.name for s in m.file.sections]
    assert names.count("parameters") == 1 and "methods" in names
    ids, mask = _inputs(model, n=2)
    ck, cv = m.run({"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        h = model.get_encoder()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))[0]
        layer = model.decoder.block[0].layer[1].EncDecAttention.k if model.config.model_type == "t5" \
            else model.model.decoder.layers[0].encoder_attn.k_proj
        want = layer(h).numpy()
    got = ck[0].transpose(0, 2, 1, 3).reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    # the same bytes with the methods section's kind changed to one a 1.0 reader does not know
    from nac.format.container import ENTRY, HEADER, METHODS, pack_sections, read_header

    _, sections, buf, _ = read_header(m.path)
    parts = [(99 if s.kind == METHODS else s.kind, s.flags, bytes(buf[s.offset:s.offset + s.length])) for s in sections]
    bad = tmp_path / "newer.nac"
    bad.write_bytes(b"".join(pack_sections(parts, (1, 1))))
    with pytest.raises(nac.NacFormatError, match="required section of unknown kind 99"):
        nac.load(bad)
    assert HEADER.size == 64 and ENTRY.size == 32


def test_single_graph_files_stay_version_1_0(tmp_path):
    path = nac.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),), tmp_path / "lin.nac")
    m = nac.load(path)
    assert m.file.version == (1, 0) and list(m.methods) == ["forward"] and m.methods["forward"] is m
    assert "methods" not in [s.name for s in m.file.sections]


def test_methods_section_is_checked(s2s, tmp_path):
    """A methods section that names a method twice, or lacks a graph, is a NacFormatError."""
    from nac.format.container import METHODS, pack_sections, read_header

    _, m = s2s
    _, sections, buf, _ = read_header(m.path)
    for doc, message in [({"methods": [{"name": "encode"}, {"name": "encode", "graph": {}}]}, "twice"),
                         ({"methods": [{"name": "encode"}, {"name": "decode"}]}, "needs one"),
                         ({"methods": [{"name": "encode"}, {"name": "no spaces", "graph": {}}]}, "methods section")]:
        parts = [(s.kind, s.flags, json.dumps(doc).encode() if s.kind == METHODS else bytes(buf[s.offset:s.offset + s.length]))
                 for s in sections]
        bad = tmp_path / "bad.nac"
        bad.write_bytes(b"".join(pack_sections(parts, (1, 1))))
        with pytest.raises(nac.NacFormatError, match=message):
            nac.load(bad)


def test_clashing_parameter_names_are_renamed():
    """Two methods that fold different data under one parameter name keep both."""
    class A(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((3,), float(k)))

        def forward(self, x):
            return x * self.w

    graphs, _ = compile_methods({"one": (A(1), (torch.randn(2, 3),)), "two": (A(2), (torch.randn(2, 3),))})
    assert set(graphs["one"].params) == {"w"} and set(graphs["two"].params) == {"two.w"}


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    """A T5 folder whose tokenizer.json is what transformers makes of a SentencePiece model
    trained here (Unigram, ``nmt_nfkc`` rules: the Precompiled normaliser, as T5's own)."""
    import types

    spm = pytest.importorskip("sentencepiece", reason="needs sentencepiece (pip install 'nac[test]')")
    from transformers.convert_slow_tokenizer import T5Converter

    d = tmp_path_factory.mktemp("t5folder")
    corpus = ["translate English to German: My name is Wolfgang and I live in Berlin",
              "summarize: the quick brown fox jumps over the lazy dog", "Hello world, this is a test.",
              "Das Haus ist gro\u00df und sch\u00f6n.", "\uff21\uff22\uff23 full-width letters \u2460"] * 40
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=str(d / "spiece"), vocab_size=60,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(d / "spiece.model"))
    original = types.SimpleNamespace(vocab_file=str(d / "spiece.model"), _extra_ids=0, legacy=True,
                                     add_prefix_space=True, convert_tokens_to_ids=sp.piece_to_id)
    tok = T5Converter(original).converted()
    assert "Precompiled" in tok.to_str()
    tok.save(str(d / "tokenizer.json"))
    torch.manual_seed(1)
    cfg = transformers.T5Config(vocab_size=tok.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                num_decoder_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                                eos_token_id=1)
    transformers.T5ForConditionalGeneration(cfg).save_pretrained(d)
    return d


@pytest.mark.heavy
def test_cli_and_pipeline_give_transformers_text(t5_folder, tmp_path):
    from tokenizers import Tokenizer

    out = tmp_path / "t5.nac"
    nac_cmd = [sys.executable, "-m", "nac.apps.cli"]
    nac_main("export", t5_folder, "--task", "translation", "-o", out)
    info = subprocess.run([*nac_cmd, "info", str(out)], check=True, capture_output=True, text=True).stdout
    assert "method encode (default):" in info and "method decode:" in info and "format 1.1" in info
    text = "translate English to German: My name is Wolfgang and I live in Berlin \uff21\u2460"
    hf_tok = Tokenizer.from_file(str(t5_folder / "tokenizer.json"))
    model = transformers.T5ForConditionalGeneration.from_pretrained(t5_folder).eval()
    ids = hf_tok.encode(text).ids
    with torch.no_grad():
        want_ids = model.generate(torch.tensor([ids]), max_new_tokens=10, num_beams=4, do_sample=False)[0]
    want = hf_tok.decode(want_ids.tolist(), skip_special_tokens=True)
    run = subprocess.run([*nac_cmd, "run", str(out), text, "--num-beams", "4", "-n", "10"], check=True,
                         capture_output=True, text=True)
    assert run.stdout.rstrip("\n") == want
    pipe = nac.pipeline("translation", out)
    assert pipe(text, num_beams=4, max_new_tokens=10) == [{"translation_text": want}]
    assert nac.pipeline("text2text-generation", out)([text], max_new_tokens=10, num_beams=4) == \
        [[{"generated_text": want}]]
    assert text2text(nac.load(out), [text], max_new_tokens=10, num_beams=4) == [[want]]


def test_bad_generation_settings(s2s):
    _, m = s2s
    for kw, message in [(dict(num_beams=0), "num_beams"), (dict(num_beams=2, num_return_sequences=3), "<= num_beams"),
                        (dict(num_beams=2, do_sample=True), "beam-sample"), (dict(early_stopping="soon"), "early_stopping"),
                        (dict(num_return_sequences=2), "greedy"), (dict(num_beams=2, return_logits=True), "beam")]:
        with pytest.raises(nac.NacInputError, match=message):
            m.generate([[5, 6, 7]], max_new_tokens=3, **kw)
    with pytest.raises(nac.NacInputError, match="token ids"):
        m.generate([[5, 10 ** 6]], max_new_tokens=3)
    with pytest.raises(nac.NacInputError, match="exceeds"):
        m.generate([[5, 6]], max_new_tokens=10 ** 6)


def test_a_contract_that_names_wrong_methods_is_refused(s2s, tmp_path):
    """Untrusted metadata: a generation contract naming a missing method, or swapping roles, is a
    NacFormatError when generating, not a KeyError."""
    import copy

    from nac.format.container import read_documents

    _, m = s2s
    d = read_documents(m.path)
    graphs = dict(m.file.methods)
    for change in ({"methods": {"encode": "encode", "decode": "nope"}},
                   {"methods": {"encode": "decode", "decode": "encode"}},
                   {"forced_eos_token_id": [10 ** 6]}, {"decoder_start_token_id": 10 ** 6}):
        meta = copy.deepcopy(d.metadata)
        meta["generation"].update(change)
        bad = write_nac(tmp_path / "bad.nac", graphs, meta)
        with pytest.raises(nac.NacFormatError, match="generation.methods|role needs|outside the vocabulary"):
            nac.load(bad).generate([[5, 6]], max_new_tokens=2)
