"""Random-init transformers encoders (BERT, DistilBERT, RoBERTa) export and agree with transformers
within 1e-4 relative to the output scale, at several batch sizes and sequence lengths from one file."""
from __future__ import annotations

import pytest
import torch
from torch.export import Dim

from conftest import export_and_compare

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")


def configs():
    common = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    yield "bert", transformers.BertConfig(**common)
    yield "roberta", transformers.RobertaConfig(**common, pad_token_id=1)
    yield "distilbert", transformers.DistilBertConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                      max_position_embeddings=64)
    yield "bert-gelu-tanh", transformers.BertConfig(**{**common, "hidden_act": "gelu_new"})


@pytest.mark.parametrize("name,config", list(configs()), ids=[n for n, _ in configs()])
def test_encoder_matches_transformers(name, config, tmp_path):
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state

    def inputs(b, s):
        ids = torch.randint(3, 300, (b, s))
        mask = torch.ones(b, s, dtype=torch.long)
        mask[-1, s // 2:] = 0  # padding in the last row
        return {"input_ids": ids, "attention_mask": mask}

    max_len = 62 if name == "roberta" else 64  # RoBERTa positions start after padding_idx + 1
    batch, seq = Dim("batch", min=1, max=16), Dim("seq", min=2, max=max_len)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    export_and_compare(Wrapped(model), (), tmp_path, kwargs=inputs(2, 8), dynamic_shapes=shapes,
                       variants=[((), inputs(1, 3)), ((), inputs(4, 40)), ((), inputs(2, max_len))])
