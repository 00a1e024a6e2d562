"""The architecture zoo: tiny random-init configs of transformers architectures a user brings.

Each `Arch` builds a small model (2 layers, hidden 32 or so), the inputs of one call at a given
(batch, length-or-size), and the dynamic shapes to export with. `check(arch, tmp)` exports it once
and compares the .nac with torch at two shapes (the example and a second one), within 1e-4
relative to the output scale. `tests/compile/test_arch_zoo.py` runs every entry in CI;
`python tests/arch_zoo.py --report out/zoo.json --readme README.md` runs them all, writes a JSON
report and regenerates the README's supported-architectures table from it (`make zoo`).

An entry that NAC cannot support yet carries ``unsupported="reason"``: the test then asserts that
export fails with a NacError (so the entry is revisited as soon as it starts working) and the README
lists the reason.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.export import Dim

REL = 1e-4
VOCAB = 320


@dataclass
class Arch:
    """One architecture: ``build()`` -> torch module taking keyword tensors; ``inputs(batch, n)`` ->
    dict of example tensors; ``shapes`` -> dynamic_shapes for torch.export; ``calls`` -> the two
    (batch, n) points compared with torch."""

    name: str
    family: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int, int], dict]
    shapes: Callable[[], dict]
    calls: tuple = ((2, 8), (3, 13))
    dynamic: str = "batch, sequence"
    unsupported: str = ""
    notes: str = ""


class Output(torch.nn.Module):
    """Wraps a transformers model: forward(**inputs) -> the tensors named in ``keys`` (a tuple)."""

    def __init__(self, model, keys=("last_hidden_state",), call=None):
        super().__init__()
        self.model, self.keys, self.call = model, keys, call

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None,
                input_values=None, input_features=None):
        given = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     pixel_values=pixel_values, input_values=input_values, input_features=input_features)
        out = (self.call or self.model)(**{k: v for k, v in given.items() if v is not None})
        if isinstance(out, torch.Tensor):
            return out
        got = tuple(out[k] if not isinstance(out, tuple) else out[0] for k in self.keys)
        return got[0] if len(got) == 1 else got


def _hf(config_cls: str, model_cls: str = "AutoModel", keys=("last_hidden_state",), **config):
    def build():
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**config)
        if hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = "eager"
        cls = getattr(transformers, model_cls)
        model = cls.from_config(cfg) if model_cls.startswith("Auto") else cls(cfg)
        _perturb_norms(model)
        return Output(model.eval(), keys)

    return build


def _perturb_norms(model):
    """Random-init norms are (1, 0) and zero biases hide mistakes; make them non-trivial."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name.lower() or "ln" in name.lower() or name.endswith("bias")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


# ---- inputs and shapes -----------------------------------------------------------------------

def _text(vocab=VOCAB, mask=True, type_ids=False, lo=3):
    def inputs(b, s):
        g = torch.Generator().manual_seed(b * 100 + s)
        d = {"input_ids": torch.randint(lo, vocab, (b, s), generator=g)}
        if mask:
            m = torch.ones(b, s, dtype=torch.long)
            if b > 1:
                m[-1, max(1, s // 2):] = 0  # right padding in the last row
            d["attention_mask"] = m
        if type_ids:
            d["token_type_ids"] = torch.zeros(b, s, dtype=torch.long)
        return d

    return inputs


def _text_shapes(names=("input_ids", "attention_mask"), max_len=48, min_len=2):
    def shapes():
        batch, seq = Dim("batch", min=1, max=16), Dim("seq", min=min_len, max=max_len)
        return {n: {0: batch, 1: seq} for n in names}

    return shapes


def _image(channels=3):
    def inputs(b, size):
        g = torch.Generator().manual_seed(b * 1000 + size)
        return {"pixel_values": torch.randn(b, channels, size, size, generator=g)}

    return inputs


def _image_shapes(size=False, multiple=32, max_size=128):
    def shapes():
        batch = Dim("batch", min=1, max=16)
        if not size:
            return {"pixel_values": {0: batch}}
        h = Dim("h", min=1, max=max_size // multiple)
        w = Dim("w", min=1, max=max_size // multiple)
        return {"pixel_values": {0: batch, 2: multiple * h, 3: multiple * w}}

    return shapes


def _audio(b, n):
    g = torch.Generator().manual_seed(b * 7 + n)
    return {"input_values": torch.randn(b, n, generator=g)}


def _features(mel=16):
    def inputs(b, frames):
        g = torch.Generator().manual_seed(b + frames)
        return {"input_features": torch.randn(b, mel, frames, generator=g)}

    return inputs


ENC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           max_position_embeddings=64)
DEC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           max_position_embeddings=128)
LOGITS = ("logits",)
VIT = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64)


def _decoder(config_cls, model_cls="AutoModelForCausalLM", min_len=2, **config):
    return dict(build=_hf(config_cls, model_cls, LOGITS, **config), inputs=_text(), shapes=_text_shapes(min_len=min_len))


def _archs():
    text = dict(inputs=_text(), shapes=_text_shapes())
    vit_like = dict(inputs=_image(), shapes=_image_shapes(), calls=((2, 32), (3, 32)), dynamic="batch")
    conv = dict(inputs=_image(), shapes=_image_shapes(size=True), calls=((2, 64), (1, 96)), dynamic="batch, height, width")

    yield Arch("ViT", "vision", _hf("ViTConfig", **VIT), **vit_like)
    yield Arch("DeiT", "vision", _hf("DeiTConfig", **VIT), **vit_like)
    yield Arch("BEiT", "vision", _hf("BeitConfig", **VIT, use_relative_position_bias=True), **vit_like)
    yield Arch("Swin", "vision", _hf("SwinConfig", image_size=32, patch_size=2, embed_dim=16, depths=[1, 1],
                                     num_heads=[2, 2], window_size=4), **vit_like)
    yield Arch("ConvNeXt", "vision", _hf("ConvNextConfig", hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                         keys=("pooler_output",)), **conv)
    yield Arch("ResNet", "vision", _hf("ResNetConfig", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       keys=("pooler_output",)), **conv)
    yield Arch("MobileViT", "vision", _hf("MobileViTConfig", image_size=64, hidden_sizes=[16, 24, 32],
                                          neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], num_attention_heads=2,
                                          keys=("pooler_output",)),
               inputs=_image(), shapes=_image_shapes(), calls=((2, 64), (1, 64)), dynamic="batch")
    yield Arch("EfficientNet", "vision", _hf("EfficientNetConfig", image_size=64, width_coefficient=0.25,
                                             depth_coefficient=0.2, hidden_dim=320, keys=("pooler_output",)), **conv)
    yield Arch("Segformer", "vision", _hf("SegformerConfig", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                                          hidden_sizes=[8, 16], num_attention_heads=[1, 2], decoder_hidden_size=16,
                                          patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
                                          model_cls="SegformerForSemanticSegmentation", keys=LOGITS),
               inputs=_image(), shapes=_image_shapes(size=True), calls=((2, 64), (1, 96)),
               dynamic="batch, height, width")

    yield Arch("BERT", "text encoder", _hf("BertConfig", **ENC), inputs=_text(type_ids=True),
               shapes=_text_shapes(("input_ids", "attention_mask", "token_type_ids")))
    yield Arch("RoBERTa", "text encoder", _hf("RobertaConfig", **ENC, pad_token_id=1), **text)
    yield Arch("DistilBERT", "text encoder", _hf("DistilBertConfig", vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                                 hidden_dim=64, max_position_embeddings=64), **text)
    yield Arch("ALBERT", "text encoder", _hf("AlbertConfig", **ENC, embedding_size=16), **text)
    yield Arch("XLM-R", "text encoder", _hf("XLMRobertaConfig", **ENC, pad_token_id=1), **text)
    yield Arch("ELECTRA", "text encoder", _hf("ElectraConfig", **ENC, embedding_size=16), **text)
    yield Arch("DeBERTa-v2", "text encoder", _hf("DebertaV2Config", **ENC, relative_attention=True,
                                                 position_buckets=16, max_relative_positions=32,
                                                 pos_att_type=["p2c", "c2p"]), **text)
    yield Arch("MPNet", "text encoder", _hf("MPNetConfig", **ENC), **text)

    yield Arch("GPT-2", "decoder", **_decoder("GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                              n_positions=128))
    yield Arch("GPT-NeoX", "decoder", **_decoder("GPTNeoXConfig", **DEC, rotary_pct=0.5))
    yield Arch("Llama", "decoder", **_decoder("LlamaConfig", **DEC, num_key_value_heads=2))
    yield Arch("Mistral", "decoder", **_decoder("MistralConfig", **DEC, num_key_value_heads=2, sliding_window=4,
                                                min_len=4),
               notes="without a KV cache, transformers' sliding-window mask specialises lengths below the window")
    yield Arch("Qwen2", "decoder", **_decoder("Qwen2Config", **DEC, num_key_value_heads=2))
    yield Arch("Phi", "decoder", **_decoder("PhiConfig", **DEC, partial_rotary_factor=0.5))
    yield Arch("Gemma", "decoder", **_decoder("GemmaConfig", **DEC, num_key_value_heads=1, head_dim=8))
    yield Arch("Gemma 2", "decoder", **_decoder("Gemma2Config", **DEC, num_key_value_heads=2, head_dim=8,
                                                sliding_window=4, final_logit_softcapping=30.0,
                                                attn_logit_softcapping=50.0, min_len=4),
               notes="without a KV cache, transformers' sliding-window mask specialises lengths below the window")
    yield Arch("OPT", "decoder", **_decoder("OPTConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, ffn_dim=64, max_position_embeddings=128,
                                            word_embed_proj_dim=32))
    yield Arch("BLOOM", "decoder", **_decoder("BloomConfig", vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4))
    yield Arch("Falcon", "decoder", **_decoder("FalconConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, new_decoder_architecture=False,
                                               multi_query=True, alibi=False))

    yield Arch("Whisper encoder", "audio", _hf("WhisperConfig", vocab_size=VOCAB, d_model=32, encoder_layers=2,
                                               encoder_attention_heads=4, decoder_layers=1,
                                               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                               num_mel_bins=16, max_source_positions=32,
                                               model_cls="WhisperForAudioClassification", keys=LOGITS),
               inputs=_features(), shapes=lambda: {"input_features": {0: Dim("batch", min=1, max=16)}},
               calls=((2, 64), (1, 64)), dynamic="batch (Whisper pads audio to a fixed 30 s window)")
    yield Arch("Wav2Vec2", "audio", _hf("Wav2Vec2Config", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
                                        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                        num_conv_pos_embedding_groups=4, feat_extract_norm="group",
                                        do_stable_layer_norm=False),
               inputs=_audio, shapes=lambda: {"input_values": {0: Dim("batch", min=1, max=16),
                                                               1: 10 * Dim("frames", min=40, max=1600)}},
               calls=((2, 800), (1, 1230)), dynamic="batch, samples (a multiple of the conv stride, 10)")

    yield Arch("CLIP text", "multimodal", _hf("CLIPTextConfig", vocab_size=VOCAB, hidden_size=32,
                                              num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                              max_position_embeddings=64, model_cls="CLIPTextModelWithProjection",
                                              keys=("text_embeds",)), **text)
    yield Arch("CLIP vision", "multimodal", _hf("CLIPVisionConfig", **VIT, model_cls="CLIPVisionModelWithProjection",
                                                keys=("image_embeds",)), **vit_like)


ARCHS = {a.name: a for a in _archs()}


def job(name: str):
    """A `nac export` / `nac zoo` factory (``arch_zoo:job`` with ``arguments = {name = "bert"}``):
    the entry's model, its example at the first call shape, and its dynamic shapes."""
    arch = ARCHS[name]
    torch.manual_seed(0)
    return arch.build(), (), {"kwargs": arch.inputs(*arch.calls[0]), "dynamic_shapes": arch.shapes()}


def check(arch: Arch, tmp: Path) -> dict:
    """Export ``arch`` and compare with torch at its two calls. Returns a report row
    {name, family, dynamic, ok, error, max_rel_err, export_s, nodes, ops}; never raises for a NAC
    failure (the row says what failed)."""
    import nac
    from nac.errors import NacError

    row = {"name": arch.name, "family": arch.family, "dynamic": arch.dynamic, "ok": False, "error": "",
           "max_rel_err": None}
    module = arch.build()
    example = arch.inputs(*arch.calls[0])
    t0 = time.perf_counter()
    try:
        path = nac.export(module, (), tmp / "m.nac", kwargs=example, dynamic_shapes=arch.shapes())
        model = nac.load(path)
    except NacError as e:
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        return row
    row["export_s"] = round(time.perf_counter() - t0, 2)
    row["nodes"] = len(model.graph.nodes)
    row["ops"] = sorted({n.op for n in model.graph.nodes})
    worst = 0.0
    for call in arch.calls:
        feeds = arch.inputs(*call)
        with torch.no_grad():
            want = module(**feeds)
        want = [want] if isinstance(want, torch.Tensor) else list(want)
        try:
            got = model.run([v.numpy() for v in feeds.values()])
        except NacError as e:
            row["error"] = f"at {call}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            return row
        for g, w in zip(got, want):
            w = w.numpy()
            if g.shape != w.shape:
                row["error"] = f"at {call}: shape {g.shape} != torch's {w.shape}"
                return row
            scale = max(1.0, float(np.abs(w).max()))
            worst = max(worst, float(np.abs(g.astype(np.float64) - w).max()) / scale)
    row["max_rel_err"] = worst
    row["ok"] = worst <= REL
    if not row["ok"]:
        row["error"] = f"max error {worst:.3g} x output scale exceeds {REL}"
    return row


TABLE_BEGIN = "<!-- zoo-table: generated by `make zoo` from tests/arch_zoo.py; do not edit by hand -->"
TABLE_END = "<!-- /zoo-table -->"


def table(rows: list[dict], when: str) -> str:
    """The README's markdown table for a report."""
    lines = [TABLE_BEGIN, "",
             f"Last run: {when}. Tiny random-init configs exported with dynamic shapes and compared with "
             f"torch at two shapes (≤ {REL:g} relative to the output scale).", "",
             "| architecture | family | dynamic dims | result | max error |", "|---|---|---|---|---|"]
    for r in rows:
        arch = ARCHS.get(r["name"])
        result = "✅ matches torch" if r["ok"] else f"❌ {arch.unsupported or r['error']}" if arch else r["error"]
        if arch and arch.notes:
            result += f" ({arch.notes})"
        err = f"{r['max_rel_err']:.1e}" if r.get("max_rel_err") is not None else "–"
        lines.append(f"| {r['name']} | {r['family']} | {r['dynamic']} | {result} | {err} |")
    lines += ["", TABLE_END]
    return "\n".join(lines)


def update_readme(readme: Path, text: str) -> None:
    """Replace the generated table between TABLE_BEGIN and TABLE_END in ``readme``."""
    src = readme.read_text()
    start, end = src.index(TABLE_BEGIN), src.index(TABLE_END) + len(TABLE_END)
    readme.write_text(src[:start] + text + src[end:])


def main(argv=None) -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="architectures to run (default: all)")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--readme", type=Path, help="regenerate this README's zoo table")
    a = p.parse_args(argv)
    rows = []
    for name in a.names or ARCHS:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            try:
                row = check(ARCHS[name], Path(d))
            except Exception as e:  # a torch.export failure or a bug: the report says which
                row = {"name": name, "family": ARCHS[name].family, "dynamic": ARCHS[name].dynamic, "ok": False,
                       "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                       "max_rel_err": None}
            row["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{row['name']:16s} {'ok ' if row['ok'] else 'FAIL'} {row['seconds']:6.1f}s "
              f"{row['max_rel_err'] if row['max_rel_err'] is not None else '':<10} {row['error']}", flush=True)
        rows.append(row)
    import transformers

    when = (f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"{platform.machine()}")
    if a.report:
        a.report.parent.mkdir(parents=True, exist_ok=True)
        a.report.write_text(json.dumps({"when": when, "rows": rows}, indent=1))
    if a.readme:
        update_readme(a.readme, table(rows, when))
    return 0 if all(r["ok"] or ARCHS[r["name"]].unsupported for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
