"""The generation contract: what a text-generation `.nac` file promises its generation loop.

The exporter writes it as ``metadata["generation"]`` (schema in `nac.format.schema`, table in
SPEC.md); `nac.apps.generate` reads it through `GenerationConfig.from_metadata` and nothing
else, for decoder-only and encoder-decoder models alike. Files written before the contract
existed (format 1.0 text-generation files with top-level ``cache``, ``eos_token_id``, ...) are
read through the same function.

The tensors a step method exchanges are fixed by the contract, not by the file:

decoder-only, method ``step`` (one graph for prefill and decode)::

    input_ids [B, T] int64, attention_mask [B, T] int64,
    past_mask [B, P] int64, past_keys / past_values [L, B, H, P, D] float32
      -> logits [B, T, V], keys / values [L, B, H, T, D]

encoder-decoder, methods ``encode`` then ``decode`` (``decode`` once per token)::

    encode: input_ids [B, S] int64, attention_mask [B, S] int64
      -> cross_keys / cross_values [L, B, H, S, D] float32 (each decoder layer's cross-attention
         keys and values, computed once from the encoder output)
    decode: decoder_input_ids [B, T] int64, encoder_attention_mask [B, S] int64,
            cross_keys / cross_values [L, B, H, S, D], past_mask [B, P] int64,
            past_keys / past_values [L, B, H, P, D]
      -> logits [B, T, V], keys / values [L, B, H, T, D]

A masked past slot (``past_mask`` 0) is ignored, so the caller may pass a preallocated cache
of fixed capacity; positions count unmasked slots.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nac.errors import NacError

DECODER_ONLY, ENCODER_DECODER = "decoder-only", "encoder-decoder"
#: tasks whose files carry a generation contract
#: encoder-decoder tasks (one text-to-text file serves all three, as in transformers)
TEXT2TEXT_TASKS = ("translation", "summarization", "text2text-generation")
GENERATION_TASKS = ("text-generation", *TEXT2TEXT_TASKS)
STEP_INPUTS = ("input_ids", "attention_mask", "past_mask", "past_keys", "past_values")
ENCODE_INPUTS = ("input_ids", "attention_mask")
ENCODE_OUTPUTS = ("cross_keys", "cross_values")
DECODE_INPUTS = ("decoder_input_ids", "encoder_attention_mask", "cross_keys", "cross_values", "past_mask",
                 "past_keys", "past_values")
STEP_OUTPUTS = ("logits", "keys", "values")


@dataclass(frozen=True)
class CacheLayout:
    """The KV cache one step method reads and returns: ``layers`` decoder layers, ``kv_heads``
    key/value heads of ``head_dim`` floats; tensors are [layers, batch, kv_heads, positions,
    head_dim] float32."""

    layers: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate with a `.nac` file (``metadata["generation"]``).

    Attributes:
        architecture: ``"decoder-only"`` or ``"encoder-decoder"``.
        methods: role -> method name in the file: ``{"step": ...}`` (decoder-only) or
            ``{"encode": ..., "decode": ...}`` (encoder-decoder).
        cache: the self-attention KV cache (`CacheLayout`); encoder-decoder files use the same
            layout for the cross-attention cache.
        vocab_size: the logits' last dimension.
        max_length: the most positions the decoder attends to (prompt + generated).
        eos_token_id: ids that end a sequence (may be empty).
        pad_token_id / bos_token_id: or None.
        decoder_start_token_id: the first decoder token (encoder-decoder only).
        forced_bos_token_id / forced_eos_token_id: as transformers' processors of those names.
        defaults: the checkpoint's generation defaults (``max_new_tokens``, ``num_beams``,
            ``length_penalty``, ``no_repeat_ngram_size``, ``early_stopping``, ...): used where the
            caller gives nothing.
    """

    architecture: str
    methods: dict
    cache: CacheLayout
    vocab_size: int
    max_length: int
    eos_token_id: tuple = ()
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: tuple = ()
    defaults: dict = field(default_factory=dict)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.architecture == ENCODER_DECODER

    def to_json(self) -> dict:
        """The ``metadata["generation"]`` object."""
        return {"architecture": self.architecture, "methods": dict(self.methods),
                "cache": {"layers": self.cache.layers, "kv_heads": self.cache.kv_heads,
                          "head_dim": self.cache.head_dim},
                "vocab_size": self.vocab_size, "max_length": self.max_length,
                "eos_token_id": list(self.eos_token_id), "pad_token_id": self.pad_token_id,
                "bos_token_id": self.bos_token_id, "decoder_start_token_id": self.decoder_start_token_id,
                "forced_bos_token_id": self.forced_bos_token_id,
                "forced_eos_token_id": list(self.forced_eos_token_id), "defaults": dict(self.defaults)}

    @classmethod
    def from_metadata(cls, metadata: dict, where: str = "metadata") -> "GenerationConfig":
        """The contract of a file's (schema-checked) metadata.

        Raises:
            NacError: the file is not a generation model, or its contract is incomplete (an
                encoder-decoder file without a decoder start token).
        """
        task = metadata.get("task")
        if task not in GENERATION_TASKS:
            raise NacError(f"{where}: a {task or 'generic'} model, not one that generates text "
                           f"({', '.join(GENERATION_TASKS)})")
        g = metadata.get("generation")
        if g is None:  # a format 1.0 text-generation file: the same facts as top-level keys
            if task != "text-generation" or not isinstance(metadata.get("cache"), dict):
                raise NacError(f"{where}: no generation settings (metadata 'generation')")
            g = {"architecture": DECODER_ONLY, "methods": {"step": "forward"}, "cache": metadata["cache"],
                 "vocab_size": metadata.get("vocab_size", 1 << 31), "max_length": metadata.get("max_length", 1 << 24),
                 **{k: metadata.get(k) for k in ("eos_token_id", "pad_token_id", "bos_token_id")}}
        c = g["cache"]
        cfg = cls(architecture=g["architecture"], methods=dict(g["methods"]),
                  cache=CacheLayout(int(c["layers"]), int(c["kv_heads"]), int(c["head_dim"])),
                  vocab_size=int(g["vocab_size"]), max_length=int(g["max_length"]),
                  eos_token_id=_ids(g.get("eos_token_id")), pad_token_id=_one(g.get("pad_token_id")),
                  bos_token_id=_one(g.get("bos_token_id")),
                  decoder_start_token_id=_one(g.get("decoder_start_token_id")),
                  forced_bos_token_id=_one(g.get("forced_bos_token_id")),
                  forced_eos_token_id=_ids(g.get("forced_eos_token_id")), defaults=dict(g.get("defaults") or {}))
        roles = ("encode", "decode") if cfg.is_encoder_decoder else ("step",)
        if set(cfg.methods) != set(roles):
            raise NacError(f"{where}: generation.methods must name {list(roles)}, not {sorted(cfg.methods)}")
        if cfg.is_encoder_decoder and cfg.decoder_start_token_id is None:
            raise NacError(f"{where}: an encoder-decoder file needs generation.decoder_start_token_id")
        return cfg


def _ids(v) -> tuple:
    if v is None:
        return ()
    return (int(v),) if isinstance(v, int) else tuple(int(x) for x in v)


def _one(v):
    if isinstance(v, list):  # (a list-valued special id: transformers takes the first)
        return int(v[0]) if v else None
    return None if v is None else int(v)
