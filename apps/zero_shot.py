"""Zero-shot classification of texts (an NLI model) and of images (CLIP), with the semantics of
transformers' ``ZeroShotClassificationPipeline`` and ``ZeroShotImageClassificationPipeline``.

Texts: each candidate label becomes the hypothesis ``hypothesis_template.format(label)`` of an
NLI pair whose premise is the text (the premise is truncated, never the hypothesis). The score of
a label is the softmax of the entailment logits over all labels, or, with ``multi_label`` (or a
single label), the softmax of (contradiction, entailment) for each label on its own.

Images: CLIP's ``logits_per_image`` for the image against ``hypothesis_template.format(label)``
for each label, softmaxed over the labels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from nac.apps.tasks import Label, _require_task, load_image, softmax
from nac.engine import Model
from nac.errors import NacInputError


@dataclass
class ZeroShot:
    """The labels of one text, most likely first, with their scores."""

    sequence: str
    labels: list[str]
    scores: list[float]


def _labels(candidate_labels, template: str) -> list[str]:
    labels = [s.strip() for s in candidate_labels.split(",") if s.strip()] if isinstance(candidate_labels, str) \
        else list(candidate_labels or [])
    if not labels:
        raise NacInputError("give at least one candidate label")
    if not isinstance(template, str) or template.format(labels[0]) == template:
        raise NacInputError(f"hypothesis_template {template!r} has no {{}} where the label goes")
    return labels


def classify_zero_shot(model: Model, texts: list[str], candidate_labels, hypothesis_template: str = "This example is {}.",
                       multi_label: bool = False) -> list[ZeroShot]:
    """Score ``candidate_labels`` (a list, or one comma-separated string) for each text.

    Raises:
        NacError: the model is not a zero-shot-classification (NLI) model or has no tokenizer.
        NacInputError: no text, no label, or a template without ``{}``.
    """
    _require_task(model, "zero-shot-classification")
    labels = _labels(candidate_labels, hypothesis_template)
    if not texts:
        raise NacInputError("no text given")
    pairs = [(t, hypothesis_template.format(label)) for t in texts for label in labels]
    tok = copy.copy(model.tokenizer)
    tok.enable_padding()
    tok.enable_truncation(int(model.metadata.get("max_length", 512)), strategy="only_first")
    try:
        encs = tok.encode_batch(pairs)
    except NacInputError:  # the premise cannot absorb the cut: the pipeline then does not truncate
        tok.no_truncation()
        encs = tok.encode_batch(pairs)
    feeds = {"input_ids": np.array([e.ids for e in encs], np.int64),
             "attention_mask": np.array([e.attention_mask for e in encs], np.int64)}
    if "token_type_ids" in model.input_names:
        feeds["token_type_ids"] = np.array([e.type_ids for e in encs], np.int64)
    logits = model.run(feeds)[0].astype(np.float32).reshape(len(texts), len(labels), -1)
    entail = int(model.metadata["entailment_id"])
    if multi_label or len(labels) == 1:
        contra = -1 if entail == 0 else 0
        scores = softmax(logits[..., [contra, entail]])[..., 1]
    else:
        scores = softmax(logits[..., entail])
    out = []
    for text, row in zip(texts, scores):
        order = list(reversed(row.argsort()))
        out.append(ZeroShot(text, [labels[i] for i in order], [float(row[i]) for i in order]))
    return out


def classify_images_zero_shot(model: Model, paths, candidate_labels,
                              hypothesis_template: str = "This is a photo of {}.") -> list[list[Label]]:
    """Score ``candidate_labels`` for each image with a CLIP file (task
    ``zero-shot-image-classification``): labels with probabilities, most likely first.

    Raises:
        NacError: wrong task or no tokenizer; NacInputError: bad image, no label, bad template.
    """
    _require_task(model, "zero-shot-image-classification")
    labels = _labels(candidate_labels, hypothesis_template)
    if not paths:
        raise NacInputError("no image given")
    pixels = np.stack([load_image(p, model.metadata["preprocess"]) for p in paths])
    tok = copy.copy(model.tokenizer)
    tok.enable_padding(pad_token=model.metadata.get("pad_token"))  # CLIP pads with its end-of-text token
    tok.enable_truncation(int(model.metadata.get("max_length", 77)))
    encs = tok.encode_batch([hypothesis_template.format(label) for label in labels])
    outs = dict(zip(model.output_names, model.run({
        "input_ids": np.array([e.ids for e in encs], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encs], np.int64), "pixel_values": pixels})))
    probs = softmax(outs["logits_per_image"].astype(np.float32))
    return [[Label(labels[i], float(row[i])) for i in sorted(range(len(labels)), key=lambda i: -row[i])]
            for row in probs]
