"""Encoder-decoder export: T5 and BART as two methods, ``encode`` and ``decode``, of one file.

``encode`` runs the encoder once and returns every decoder layer's cross-attention keys and
values; ``decode`` runs one decoder step over a preallocated self-attention KV cache (the
tensors of `nac.format.generation`). Both are written with transformers' own submodules (the
projections, norms and feed-forward blocks of the checkpoint), around an attention whose
positions are explicit: in a preallocated cache a slot is not a position, and T5's relative
position bias and BART's learned positions need the position. This module imports torch (the
exporter's side).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from nac.errors import NacExportError


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H * D] -> [B, H, T, D]."""
    b, t, _ = x.shape
    return x.reshape(b, t, heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] -> [B, T, H * D]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def _self_mask(past_mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Additive [B, 1, T, P + T] mask: a query sees the unmasked past and new tokens up to itself."""
    b = past_mask.shape[0]
    causal = torch.ones(steps, steps, dtype=torch.bool).tril()
    seen = torch.cat([past_mask.bool()[:, None, :].expand(b, steps, -1), causal[None].expand(b, -1, -1)], -1)
    return torch.zeros(seen.shape, dtype=torch.float32).masked_fill(~seen, torch.finfo(torch.float32).min)[:, None]


def _cross_mask(encoder_mask: torch.Tensor) -> torch.Tensor:
    """Additive [B, 1, 1, S] mask over the encoder's padding."""
    return torch.zeros(encoder_mask.shape, dtype=torch.float32).masked_fill(
        encoder_mask == 0, torch.finfo(torch.float32).min)[:, None, None]


class T5Encode(torch.nn.Module):
    """forward(input_ids [B, S] int64, attention_mask [B, S] int64)
    -> {"cross_keys", "cross_values"}: [L, B, H, S, D] float32, each decoder layer's
    cross-attention projections of the encoder output (transformers' T5 and mT5)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        h = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        heads = self.model.config.num_heads
        attn = [block.layer[1].EncDecAttention for block in self.model.decoder.block]
        return {"cross_keys": torch.stack([_heads(a.k(h), heads) for a in attn]),
                "cross_values": torch.stack([_heads(a.v(h), heads) for a in attn])}


class T5Decode(torch.nn.Module):
    """One T5 decoder step with explicit positions (`nac.format.generation`'s ``decode``).

    T5 attention is unscaled (no 1/sqrt(d)); self-attention adds the relative position bias of
    the first decoder layer (Raffel et al. 2020, §2.1; transformers' ``T5Attention.compute_bias``
    with ``bidirectional=False``), looked up here from a table over the clamped distance: a
    decoder's key never lies after its query except the query's own new tokens (distance <= 0,
    bucket 0 for all of them, as transformers computes)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        cfg = model.config
        self.heads = cfg.num_heads
        self.scale_output = bool(getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings))
        first = model.decoder.block[0].layer[0].SelfAttention
        self.max_distance = int(cfg.relative_attention_max_distance)
        distance = torch.arange(self.max_distance + 1)  # how far back a key is, saturating
        self.register_buffer("buckets", first._relative_position_bucket(
            -distance, bidirectional=False, num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance), persistent=False)

    def position_bias(self, past_mask, steps: int):
        """[B, H, T, P + T]: the bias of each (query, key) pair from their positions (the past's
        are its slot indices, the new tokens' follow the unmasked past)."""
        b, p = past_mask.shape
        start = past_mask.sum(-1, keepdim=True)  # [B, 1]: positions taken by the past
        queries = start + torch.arange(steps)[None]  # [B, T]
        keys = torch.cat([torch.arange(p)[None].expand(b, -1), queries], -1)  # [B, P + T]
        back = (queries[:, :, None] - keys[:, None, :]).clamp(0, self.max_distance)  # [B, T, P + T]
        table = self.model.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight[self.buckets]
        return F.embedding(back, table).permute(0, 3, 1, 2)

    def forward(self, decoder_input_ids, encoder_attention_mask, cross_keys, cross_values, past_mask, past_keys,
                past_values):
        steps = decoder_input_ids.shape[1]
        h = self.model.decoder.embed_tokens(decoder_input_ids)
        self_bias = self.position_bias(past_mask, steps) + _self_mask(past_mask, steps)
        cross_bias = _cross_mask(encoder_attention_mask)
        keys, values = [], []
        for i, block in enumerate(self.model.decoder.block):
            sa, ca, ff = block.layer[0], block.layer[1], block.layer[2]
            x = sa.layer_norm(h)
            q, k, v = (_heads(proj(x), self.heads) for proj in (sa.SelfAttention.q, sa.SelfAttention.k,
                                                                 sa.SelfAttention.v))
            keys.append(k)
            values.append(v)
            k, v = torch.cat([past_keys[i], k], 2), torch.cat([past_values[i], v], 2)
            h = h + sa.SelfAttention.o(_merge(F.scaled_dot_product_attention(q, k, v, self_bias, scale=1.0)))
            x = ca.layer_norm(h)
            q = _heads(ca.EncDecAttention.q(x), self.heads)
            a = F.scaled_dot_product_attention(q, cross_keys[i], cross_values[i], cross_bias, scale=1.0)
            h = h + ca.EncDecAttention.o(_merge(a))
            h = ff(h)
        h = self.model.decoder.final_layer_norm(h)
        if self.scale_output:
            h = h * (self.model.model_dim ** -0.5)
        return {"logits": self.model.lm_head(h), "keys": torch.stack(keys), "values": torch.stack(values)}


class BartEncode(torch.nn.Module):
    """forward(input_ids [B, S] int64, attention_mask [B, S] int64)
    -> {"cross_keys", "cross_values"}: [L, B, H, S, D] float32 (transformers'
    ``BartForConditionalGeneration``, post-norm layers)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        h = self.model.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        heads = self.model.config.decoder_attention_heads
        layers = self.model.model.decoder.layers
        return {"cross_keys": torch.stack([_heads(layer.encoder_attn.k_proj(h), heads) for layer in layers]),
                "cross_values": torch.stack([_heads(layer.encoder_attn.v_proj(h), heads) for layer in layers])}


class BartDecode(torch.nn.Module):
    """One BART decoder step with explicit positions (`nac.format.generation`'s ``decode``):
    scaled token embeddings plus learned positions (offset 2), post-norm layers (Lewis et al.
    2020; transformers' ``BartDecoderLayer``), logits plus ``final_logits_bias``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.heads = model.config.decoder_attention_heads

    def forward(self, decoder_input_ids, encoder_attention_mask, cross_keys, cross_values, past_mask, past_keys,
                past_values):
        dec = self.model.model.decoder
        steps = decoder_input_ids.shape[1]
        positions = past_mask.sum(-1, keepdim=True) + torch.arange(steps)[None]
        h = dec.embed_tokens(decoder_input_ids) + F.embedding(positions + dec.embed_positions.offset,
                                                              dec.embed_positions.weight)
        h = dec.layernorm_embedding(h)
        self_mask = _self_mask(past_mask, steps)
        cross_mask = _cross_mask(encoder_attention_mask)
        keys, values = [], []
        for i, layer in enumerate(dec.layers):
            sa = layer.self_attn
            q, k, v = (_heads(proj(h), self.heads) for proj in (sa.q_proj, sa.k_proj, sa.v_proj))
            keys.append(k)
            values.append(v)
            k, v = torch.cat([past_keys[i], k], 2), torch.cat([past_values[i], v], 2)
            h = layer.self_attn_layer_norm(h + sa.out_proj(_merge(F.scaled_dot_product_attention(q, k, v, self_mask))))
            ca = layer.encoder_attn
            q = _heads(ca.q_proj(h), self.heads)
            a = F.scaled_dot_product_attention(q, cross_keys[i], cross_values[i], cross_mask)
            h = layer.encoder_attn_layer_norm(h + ca.out_proj(_merge(a)))
            h = layer.final_layer_norm(h + layer.fc2(layer.activation_fn(layer.fc1(h))))
        logits = self.model.lm_head(h) + self.model.final_logits_bias
        return {"logits": logits, "keys": torch.stack(keys), "values": torch.stack(values)}


def _geometry(model) -> tuple[int, int, int, int]:
    """(decoder layers, heads, head_dim, decoder max positions) of a T5 or BART model."""
    cfg = model.config
    if cfg.model_type in ("t5", "mt5"):
        return cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv, 1 << 14
    heads = cfg.decoder_attention_heads
    return cfg.decoder_layers, heads, cfg.d_model // heads, cfg.max_position_embeddings


def seq2seq(model: torch.nn.Module, name: str = "seq2seq", tokenizer=None, task: str = "text2text-generation",
            extra_meta: dict | None = None):
    """A transformers ``T5ForConditionalGeneration`` or ``BartForConditionalGeneration`` object
    -> a two-method export job (``encode``, ``decode``) with the generation contract.

    Raises:
        NacExportError: another architecture, or a BART variant these wrappers do not reproduce
            (mBART-style pre-norm layers).
    """
    from nac.apps.sources import ExportJob, generation_contract

    cfg = model.config
    model = model.eval()
    kind = cfg.model_type
    if kind in ("t5", "mt5"):
        encode, decode = T5Encode(model), T5Decode(model)
    elif kind == "bart":
        if getattr(cfg, "add_final_layer_norm", False) or getattr(cfg, "normalize_before", False):
            raise NacExportError(f"{name}: pre-norm BART variants (mBART) are not supported yet")
        encode, decode = BartEncode(model), BartDecode(model)
    else:
        raise NacExportError(f"{name}: encoder-decoder export supports T5 and BART, not {kind!r}")
    layers, heads, head_dim, positions = _geometry(model)
    enc_max = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 512)
    max_len = min(positions, 1024)
    gen = generation_contract(model, "encoder-decoder", {"encode": "encode", "decode": "decode"},
                              (layers, heads, head_dim), max_len)
    meta = {"task": task, "model": name, "max_length": enc_max, "generation": gen, **(extra_meta or {})}
    vocab = cfg.vocab_size
    b, s, p = 2, 7, 3
    ids = (torch.arange(b * s).reshape(b, s) * 7 + 3) % vocab
    batch = torch.export.Dim("batch", min=1, max=256)
    seq = torch.export.Dim("seq", min=1, max=enc_max)
    past = torch.export.Dim("past", min=0, max=max_len - 1)
    cache = torch.zeros(layers, b, heads, p, head_dim)
    cross = torch.zeros(layers, b, heads, s, head_dim)
    encode_job = ExportJob(encode, (ids, torch.ones(b, s, dtype=torch.long)), {},
                           ({0: batch, 1: seq}, {0: batch, 1: seq}))
    decode_job = ExportJob(decode, (ids[:, :1], torch.ones(b, s, dtype=torch.long), cross, cross.clone(),
                                    torch.ones(b, p, dtype=torch.long), cache, cache.clone()), {},
                           ({0: batch}, {0: batch, 1: seq}, {1: batch, 3: seq}, {1: batch, 3: seq},
                            {0: batch, 1: past}, {1: batch, 3: past}, {1: batch, 3: past}))
    return ExportJob(None, metadata=meta, tokenizer=tokenizer, methods={"encode": encode_job, "decode": decode_job})


def seq2seq_folder(path: Path, task: str = "text2text-generation"):
    """A transformers T5 / BART folder -> two-method export job (see `seq2seq`)."""
    from transformers import AutoModelForSeq2SeqLM

    from nac.apps.sources import load_pretrained

    path = Path(path)
    model = load_pretrained(AutoModelForSeq2SeqLM, path)
    tok = path / "tokenizer.json"
    extra = {}
    cfg = path / "tokenizer_config.json"
    if cfg.is_file():
        c = json.loads(cfg.read_text())
        if isinstance(c.get("model_max_length"), int) and c["model_max_length"] < (1 << 24):
            extra["max_length"] = c["model_max_length"]
    job = seq2seq(model, path.name, tok.read_bytes() if tok.is_file() else None, task)
    job.metadata.update({k: v for k, v in extra.items() if v < job.metadata["max_length"]})
    return job
