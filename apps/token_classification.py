"""Token classification (named-entity recognition) with transformers' pipeline semantics.

`classify_tokens` runs a ``…ForTokenClassification`` file (task ``token-classification``) and
groups its per-token predictions as transformers' ``TokenClassificationPipeline`` does
(transformers 5, pipelines/token_classification.py): softmax per token; special tokens
dropped; with an aggregation strategy, sub-words merged into words ("first", "average", "max":
a token is a sub-word when its text is longer than the characters it covers, for tokenizers with
a continuing-subword prefix such as WordPiece, and otherwise when no space precedes it), then
adjacent tokens or words with the same entity (B-/I- tags) merged into one span; entities
labelled ``O`` left out. Spans are character offsets into each text (`Encoding.offsets`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nac.apps.tasks import _require_task, softmax, text_tokenizer
from nac.engine import Model
from nac.errors import NacInputError

STRATEGIES = ("none", "simple", "first", "average", "max")


@dataclass
class Entity:
    """One entity: ``entity`` is the token's label (strategy "none") or the entity group (the
    others, transformers' ``entity_group``); ``score`` its probability (the mean over the group);
    ``word`` the decoded text; ``start``/``end`` character offsets into the text; ``index`` the
    token position (strategy "none" only, else None)."""

    entity: str
    score: float
    word: str
    start: int
    end: int
    index: int | None = None


def classify_tokens(model: Model, texts: list[str], aggregation_strategy: str = "none",
                    ignore_labels=("O",)) -> list[list[Entity]]:
    """Entities in each text (batched in one run).

    Args:
        model: a token-classification model with its tokenizer.
        texts: the texts.
        aggregation_strategy: "none" (one entity per token), "simple" (adjacent tokens with the
            same entity merged), "first" / "average" / "max" (words get the label of their first
            token / of the average scores / of the token with the highest score, then merged).
        ignore_labels: labels left out of the result.

    Raises:
        NacError: the model is not a token-classification model or has no tokenizer.
        NacInputError: no text, or an unknown aggregation strategy.
    """
    _require_task(model, "token-classification")
    if aggregation_strategy not in STRATEGIES:
        raise NacInputError(f"aggregation_strategy must be one of {', '.join(STRATEGIES)}, not {aggregation_strategy!r}")
    if not texts:
        raise NacInputError("no text given")
    tok = text_tokenizer(model)
    encs = tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in encs], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encs], np.int64)}
    if "token_type_ids" in model.input_names:
        feeds["token_type_ids"] = np.array([e.type_ids for e in encs], np.int64)
    logits = model.run(feeds)[0].astype(np.float32)
    labels = model.metadata["labels"]
    word_aware = bool(model.metadata.get("word_aware"))
    unk = model.metadata.get("unk_token_id")
    out = []
    for text, enc, row in zip(texts, encs, logits):
        scores = softmax(row)  # float32, as the pipeline's numpy softmax of float32 logits
        pre = []
        for idx, (i, special, (s, e)) in enumerate(zip(enc.ids, enc.special_tokens_mask, enc.offsets)):
            if special:
                continue
            word = tok.id_to_token(i) or ""
            ref = text[s:e]
            sub = len(word) != len(ref) if word_aware else (s > 0 and " " not in text[s - 1:s + 1])
            if unk is not None and i == unk:
                word, sub = ref, False
            pre.append({"word": word, "scores": scores[idx], "start": s, "end": e, "index": idx, "is_subword": sub})
        entities = _aggregate(pre, aggregation_strategy, labels, tok)
        out.append([x for x in entities if x.entity not in ignore_labels])
    return out


def _aggregate(pre: list[dict], strategy: str, labels: list[str], tok) -> list[Entity]:
    if strategy in ("none", "simple"):
        entities = []
        for p in pre:
            k = int(p["scores"].argmax())
            entities.append(Entity(labels[k], float(p["scores"][k]), p["word"], p["start"], p["end"], p["index"]))
    else:
        entities, group = [], None
        for p in pre:
            if group is None:
                group = [p]
            elif p["is_subword"]:
                group.append(p)
            else:
                entities.append(_word(group, strategy, labels, tok))
                group = [p]
        if group is not None:
            entities.append(_word(group, strategy, labels, tok))
    return entities if strategy == "none" else _group(entities, tok)


def _word(group: list[dict], strategy: str, labels: list[str], tok) -> Entity:
    """transformers' ``aggregate_word``: one label for the tokens of a word."""
    word = tok.decode_tokens([p["word"] for p in group])
    if strategy == "first":
        scores = group[0]["scores"]
    elif strategy == "max":
        scores = max(group, key=lambda p: p["scores"].max())["scores"]
    else:
        scores = np.nanmean(np.stack([p["scores"] for p in group]), axis=0)
    k = int(scores.argmax())
    return Entity(labels[k], float(scores[k]), word, group[0]["start"], group[-1]["end"])


def _tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _group(entities: list[Entity], tok) -> list[Entity]:
    """transformers' ``group_entities``: adjacent entities with the same tag, a B- starting anew."""
    groups, run = [], []
    for e in entities:
        if run:
            bi, tag = _tag(e.entity)
            if not (tag == _tag(run[-1].entity)[1] and bi != "B"):
                groups.append(_merge(run, tok))
                run = []
        run.append(e)
    if run:
        groups.append(_merge(run, tok))
    return groups


def _merge(run: list[Entity], tok) -> Entity:
    return Entity(run[0].entity.split("-", 1)[-1], float(np.mean(np.nanmean([e.score for e in run]))),
                  tok.decode_tokens([e.word for e in run]), run[0].start, run[-1].end)
