"""Text generation with a KV cache: greedy decoding token-for-token identical to transformers'
generate, logits at every step within 1e-4 of the logit scale, GPT-2 and Llama (GQA, rotary)
configs, left-padded batches, seeded sampling, bad input."""
from __future__ import annotations

import numpy as np
import pytest

import nac
from conftest import byte_level_bpe, nac_main, nac_without
from nac.apps.generate import generate, generate_text

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
import torch  # noqa: E402

from nac.apps.sources import causal_lm  # noqa: E402

pytestmark = pytest.mark.heavy  # 11 exported decoder families, about 4 minutes on 2 cores: the suite starts this module first


def configs():
    yield "gpt2-2x4x64", transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=300, n_positions=160,
                                                 bos_token_id=0, eos_token_id=299)
    yield "gpt2-3x2x32", transformers.GPT2Config(n_layer=3, n_head=2, n_embd=32, vocab_size=211, n_positions=160,
                                                 bos_token_id=0, eos_token_id=210, activation_function="gelu_new")
    yield "llama-gqa", transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                hidden_size=64, intermediate_size=128, vocab_size=256,
                                                max_position_embeddings=160, bos_token_id=1, eos_token_id=2,
                                                tie_word_embeddings=True)
    # issue 12: a sliding window shorter than the prompts (the preallocated cache used to disagree)
    yield "mistral-window4", transformers.MistralConfig(num_hidden_layers=2, num_attention_heads=4,
                                                        num_key_value_heads=2, hidden_size=64, intermediate_size=128,
                                                        vocab_size=256, max_position_embeddings=160, sliding_window=4,
                                                        bos_token_id=1, eos_token_id=2)
    yield "qwen2-window3", transformers.Qwen2Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                                    hidden_size=64, intermediate_size=128, vocab_size=256,
                                                    max_position_embeddings=160, use_sliding_window=True,
                                                    sliding_window=3, max_window_layers=1, bos_token_id=1,
                                                    eos_token_id=2)
    # the other attention variants of issue 12
    common = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, vocab_size=256, bos_token_id=1,
                  eos_token_id=2)
    yield "phi-partial-rotary", transformers.PhiConfig(**common, intermediate_size=128, max_position_embeddings=160,
                                                       partial_rotary_factor=0.5)
    yield "gpt-neox-rotary-pct", transformers.GPTNeoXConfig(**common, intermediate_size=128,
                                                            max_position_embeddings=160, rotary_pct=0.25)
    # Gemma 2: sliding (window 4) and global layers alternate; attention and final logits soft-capped
    yield "gemma2-local-global", transformers.Gemma2Config(**{**common, "num_hidden_layers": 3}, intermediate_size=128,
                                                           max_position_embeddings=160, num_key_value_heads=2,
                                                           head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                                                           final_logit_softcapping=3.0, attn_logit_softcapping=5.0)
    yield "bloom-alibi", transformers.BloomConfig(n_layer=2, n_head=4, hidden_size=64, vocab_size=256, bos_token_id=1,
                                                  eos_token_id=2)
    yield "falcon-multi-query", transformers.FalconConfig(**common, new_decoder_architecture=False, multi_query=True,
                                                          alibi=False)
    yield "opt", transformers.OPTConfig(**common, ffn_dim=128, max_position_embeddings=160, word_embed_proj_dim=64)


@pytest.fixture(scope="module", params=list(configs()), ids=[n for n, _ in configs()])
def lm(request, tmp_path_factory):
    name, cfg = request.param
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    job = causal_lm(model, name)
    path = nac.export(job.module, job.args, tmp_path_factory.mktemp(name) / "lm.nac", dynamic_shapes=job.dynamic_shapes,
                      metadata=job.metadata)
    return model, nac.load(path)


PROMPTS = [[5, 17, 42, 8, 99, 100, 3], [11, 12, 13, 14, 15, 16, 17], [7, 90, 91, 92, 5, 6, 8]]


def test_greedy_matches_transformers_with_logits(lm):
    model, m = lm
    for prompt in PROMPTS:
        got, logits = generate(m, prompt, max_new_tokens=64, return_logits=True)
        with torch.no_grad():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=model.config.eos_token_id)
        assert got[0].tolist() == ref.sequences[0].tolist()
        want = torch.stack(ref.logits)[:, 0].numpy()
        assert np.abs(logits[:, 0] - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("kw", [dict(num_beams=4), dict(num_beams=3, length_penalty=0.5, no_repeat_ngram_size=2),
                                dict(num_beams=4, early_stopping=True, num_return_sequences=2),
                                dict(num_beams=2, early_stopping="never", min_new_tokens=5, repetition_penalty=1.3)],
                         ids=["beams4", "penalties", "return2", "never"])
def test_beam_search_matches_transformers(lm, kw):
    """`Model.generate` with beams: token-for-token transformers' beam search (issue 15), a
    left-padded batch included, with EOS ids common enough that hypotheses finish early."""
    model, m = lm
    eos = list(range(3, 40))
    prompts = [[5, 17, 42, 8, 99], [11, 12], [7, 90, 91]]
    got = m.generate(prompts, max_new_tokens=12, eos_token_id=eos, **kw)
    for k, prompt in enumerate(prompts):
        with torch.no_grad():
            want = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=eos,
                                  pad_token_id=0, **kw)
        n = kw.get("num_return_sequences", 1)
        width = max(map(len, prompts))
        for row, ref in zip(got[k * n:(k + 1) * n], want):
            ref = ref.tolist()
            assert row[width - len(prompt):width - len(prompt) + len(ref)].tolist() == ref


def test_left_padded_batch_matches_transformers(lm):
    """A batch of prompts of different lengths, left-padded, gives each prompt's own continuation."""
    model, m = lm
    prompts = [[5, 17, 42, 8, 99], [11, 12], [7, 90, 91]]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id
    got = generate(m, prompts, max_new_tokens=20)
    width = max(len(p) for p in prompts)
    for prompt, row in zip(prompts, got):
        with torch.no_grad():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, pad_token_id=pad)[0]
        cont = ref[len(prompt):].tolist()
        assert row[:width - len(prompt)].tolist() == [pad] * (width - len(prompt))
        assert row[width - len(prompt):width].tolist() == prompt
        assert row[width:width + len(cont)].tolist() == cont
        assert set(row[width + len(cont):].tolist()) <= {pad}  # after an early EOS: padding


def test_sampling_is_reproducible(lm):
    _, m = lm
    kw = dict(max_new_tokens=30, do_sample=True, temperature=0.8, top_k=50, top_p=0.9, repetition_penalty=1.2)
    a = generate(m, PROMPTS[0], seed=123, **kw)
    b = generate(m, PROMPTS[0], seed=123, **kw)
    c = generate(m, PROMPTS[0], seed=321, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kw, match", [
    ({"temperature": -1.0, "do_sample": True}, "temperature must be > 0"),
    ({"top_p": 0.0}, "top_p must be in"),
    ({"top_p": 1.5}, "top_p must be in"),
    ({"top_k": -3}, "top_k must be"),
    ({"max_new_tokens": "context"}, "exceeds the model's context of {context}"),
])
def test_bad_settings(lm, kw, match):
    _, m = lm
    if kw.get("max_new_tokens") == "context":  # 160, or 1024 for BLOOM (ALiBi has no position table)
        kw, match = {"max_new_tokens": m.metadata["max_length"]}, match.format(context=m.metadata["max_length"])
    with pytest.raises(nac.NacInputError, match=match):
        generate(m, PROMPTS[0], **{"max_new_tokens": 5, **kw})


def test_empty_prompt_and_wrong_task(lm, tmp_path):
    _, m = lm
    with pytest.raises(nac.NacInputError, match="empty prompt"):
        generate(m, [], max_new_tokens=5)
    enc = nac.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),), tmp_path / "lin.nac", metadata={"task": "x"})
    with pytest.raises(nac.NacError, match="not one that generates text"):
        generate(nac.load(enc), [1, 2], max_new_tokens=2)


FOLDER_MODELS = {
    "gpt2": lambda v: transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=v, n_positions=128,
                                              bos_token_id=0, eos_token_id=0),
    # issue 12: alternating sliding/global layers with soft-capping, and ALiBi, through `nac run`
    "gemma2": lambda v: transformers.Gemma2Config(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                                  hidden_size=32, head_dim=16, intermediate_size=64, vocab_size=v,
                                                  max_position_embeddings=128, sliding_window=3,
                                                  final_logit_softcapping=3.0, attn_logit_softcapping=5.0,
                                                  bos_token_id=0, eos_token_id=0, pad_token_id=0),
    "bloom": lambda v: transformers.BloomConfig(n_layer=2, n_head=2, hidden_size=32, vocab_size=v, bos_token_id=0,
                                                eos_token_id=0),
}


@pytest.mark.parametrize("family", list(FOLDER_MODELS))
def test_text_in_text_out_from_a_folder(tmp_path, family):
    """A causal-LM checkpoint folder with a byte-level BPE tokenizer -> nac export -> nac run."""
    corpus = ["The quick brown fox jumps over the lazy dog.", "Grüße aus Zürich — naïve café ☕ 🙂"] * 50
    tok = byte_level_bpe(corpus, 300, ["<|endoftext|>"])
    folder = tmp_path / f"tiny-{family}"
    torch.manual_seed(0)
    cfg = FOLDER_MODELS[family](tok.get_vocab_size())
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    nac_main("export", folder, "-o", tmp_path / "g.nac")
    m = nac.load(tmp_path / "g.nac")
    assert m.metadata["task"] == "text-generation"
    prompt = "Grüße aus"
    pieces = []
    text = generate_text(m, prompt, max_new_tokens=25, stream=pieces.append)
    ids = tok.encode(prompt).ids
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=25, do_sample=False, pad_token_id=0)
    assert text == tok.decode(ref[0, len(ids):].tolist(), skip_special_tokens=True)
    assert "".join(pieces) == text  # a random model emits invalid UTF-8 too: that stays U+FFFD, as decode gives
    # the text app tokenises on NAC's VM: no tokenizers, transformers or torch needed
    out = nac_without(("tokenizers", "transformers", "torch"), "run", tmp_path / "g.nac", prompt, "-n", "25")
    assert out.returncode == 0, out.stderr
    assert out.stdout == prompt + text + "\n"


def test_streaming_never_splits_a_character():
    """Byte-level tokens split multi-byte characters; the stream holds them back until complete."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from nac.apps.generate import TextStream

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = "café 🙂 Zürich — ☕ naïve"
    ids = tok.encode(text).ids
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte
    pieces = []
    stream = TextStream(tok, pieces.append)
    for i in ids:
        stream(np.array([i]))
    stream.end()
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "🙂" in pieces or any("🙂" in p for p in pieces)


def test_stop_strings_and_the_text_iterator(tmp_path):
    from nac.apps.generate import iter_text

    tok = byte_level_bpe(["the cat sat on the mat and the dog ran in the park"] * 40, 280)
    torch.manual_seed(3)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=tok.get_vocab_size(), n_positions=256,
                                  bos_token_id=None, eos_token_id=None)
    job = causal_lm(transformers.GPT2LMHeadModel(cfg).eval(), "tiny", tok.to_str().encode())
    m = nac.load(nac.export(job.module, job.args, tmp_path / "t.nac", dynamic_shapes=job.dynamic_shapes,
                            metadata=job.metadata, tokenizer=job.tokenizer))
    full = generate_text(m, "the cat", max_new_tokens=40)
    assert len(full) > 12
    stop = full[8:11]  # a piece from the middle of the greedy completion
    cut = generate_text(m, "the cat", max_new_tokens=40, stop=[stop, "never appears"])
    assert cut == full[:full.index(stop) + len(stop)]
    assert "".join(iter_text(m, "the cat", max_new_tokens=40)) == full
    with pytest.raises(nac.NacInputError, match="stop strings must not be empty"):
        generate_text(m, "the cat", max_new_tokens=5, stop=[""])
    with pytest.raises(nac.NacInputError, match="top_p"):
        list(iter_text(m, "the cat", max_new_tokens=5, top_p=2.0))


def test_attention_reads_the_cache_in_place(lm):
    """The export pass leaves no copy of the KV cache in a decode step: attention takes the cache
    and the new keys as two segments (and shared KV heads as grouped-query attention), and the
    step's new keys/values are the new tensors themselves, not a slice of a concatenation."""
    model, m = lm
    g = m.graph
    prod = g.producers()
    attn = [n for n in g.nodes if n.op == "scaled_dot_product_attention"]
    if model.config.model_type in ("gemma2", "bloom"):  # soft-capping / ALiBi: transformers' eager attention,
        assert not attn  # matmuls on the concatenated cache (the pass does not cover it yet)
        return
    assert attn and all(len(n.inputs) == 6 for n in attn)
    for n in attn:
        for i, cache in ((1, "past_keys"), (2, "past_values")):  # the cache as it lies: a layer of the input
            src = prod[n.inputs[i]]
            assert src.op == "select" and src.inputs == [cache], (i, src.op, src.inputs)
        for i in (4, 5):  # the new tokens' keys/values (a cat along features is rotary, not a cache copy)
            src = prod.get(n.inputs[i])
            assert src is None or src.op != "expand" and not (src.op == "cat" and src.attrs["dim"] % 4 == 2)
    kv_heads = m.generation_config.cache.kv_heads
    q_heads = [g.values[n.inputs[0]].shape[1] for n in attn]
    assert all(n.attrs["enable_gqa"] == (h != kv_heads) for n, h in zip(attn, q_heads))
    assert not any(n.op == "cat" and len(n.inputs) == 1 for n in g.nodes)


def _prefill_feeds(m, ids):
    c = m.generation_config.cache
    empty = np.zeros((c.layers, len(ids), c.kv_heads, 0, c.head_dim), np.float32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "past_mask": np.zeros((len(ids), 0), np.int64),
            "past_keys": empty, "past_values": empty}


def test_logits_to_keep_computes_only_the_last_rows(lm):
    """``run(..., logits_to_keep=k)`` returns the last k positions' logits, as transformers'
    argument of that name does (within 1e-4 of the logit scale), with keys and values unchanged;
    the narrowed graph's LM head multiplies [B * min(T, k), H], not [B * T, H]."""
    from nac.engine.narrow import keep_last

    model, m = lm
    ids = np.array([PROMPTS[0] + [1, 2], PROMPTS[1] + [3, 4]])  # B=2, T=9
    feeds = _prefill_feeds(m, ids)
    full = m.run(feeds)
    for k in (1, 4, 20):
        got = m.run(feeds, logits_to_keep=k)
        assert got[0].shape == (2, min(9, k), full[0].shape[2])
        with torch.no_grad():
            want = model(torch.from_numpy(ids), logits_to_keep=k).logits.numpy()
        assert np.abs(got[0] - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
        assert np.abs(got[0] - full[0][:, -k:]).max() <= 1e-5 * max(1.0, np.abs(want).max())
        assert all(np.array_equal(a, b) for a, b in zip(got[1:], full[1:]))
    g = keep_last(m.graph, 1)
    assert g is not None, "the step graph's LM head was not narrowed"
    plan = m.plan({n: a.shape for n, a in feeds.items()}, logits_to_keep=1)
    vocab = full[0].shape[2]
    head = [s for s in plan.steps if s.op == "linear"][-1]
    assert plan.array(head.outputs[0]).shape[-1] == vocab
    assert np.prod(plan.array(head.inputs[0]).shape[:-1]) == 2  # a row per sequence
    assert keep_last(m.graph, 1, output="keys") is None  # the cache is not row-wise in the sequence


def test_logits_to_keep_falls_back_and_rejects_bad_values(lm, monkeypatch):
    """A graph the rewrite does not match still answers (the whole graph, then a slice), and
    ``logits_to_keep`` must be an int >= 0."""
    import nac.engine.model as engine_model

    _, m = lm
    ids = np.array([PROMPTS[2]])
    feeds = _prefill_feeds(m, ids)
    full = m.run(feeds)
    monkeypatch.setattr(engine_model, "keep_last", lambda g, k: None)
    m._narrowed.clear()
    got = m.run(feeds, logits_to_keep=2)
    m._narrowed.clear()
    assert np.array_equal(got[0], full[0][:, -2:])
    assert np.array_equal(m.run(feeds, logits_to_keep=np.int64(2))[0], got[0])
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(nac.NacInputError, match="logits_to_keep"):
            m.run(feeds, logits_to_keep=bad)


def test_logits_to_keep_needs_per_position_logits(tmp_path):
    """A classifier's ``logits`` [batch, labels] have no positions to keep: an error naming the
    shapes, never a slice of the labels."""
    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return {"logits": self.head(x)}

    m = nac.load(nac.export(Classifier().eval(), (torch.randn(2, 8),), tmp_path / "cls.nac"))
    x = np.ones((2, 8), np.float32)
    assert m.output_names == ["logits"] and m.run(x)[0].shape == (2, 3)
    with pytest.raises(nac.NacInputError, match=r"\[batch, seq, vocab\] 'logits'"):
        m.run(x, logits_to_keep=1)


def test_beam_top_k_picks_what_a_stable_sort_picks():
    """Beam search's partitioned top-k equals a full stable sort, ties included (lower index first)."""
    from nac.apps.generate import _top

    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.integers(-4, 4, (3, int(rng.integers(50, 400)))).astype(np.float32)  # many exact ties
        k = int(rng.integers(1, 40))
        assert (_top(x, k) == np.argsort(-x, axis=1, kind="stable")[:, :k]).all()
