"""Task apps on a loaded model: image classification, sentence embeddings, raw ``.npy`` I/O.

The task comes from the file's metadata (``metadata["task"]``), never from its name. Nothing here
imports torch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nac.engine import Model
from nac.errors import NacError, NacInputError


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (float64 accumulation)."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# -- images -------------------------------------------------------------------------------------------
def load_image(path, preprocess: dict) -> np.ndarray:
    """Decode an image with Pillow and preprocess it as the metadata says.

    Files from a Hugging Face folder carry the recipe of the model's own image processor
    (``preprocess["processor"]``, see `_hf_preprocess`). Otherwise (ImageNet models): resize the
    shorter side to ``resize`` (``interpolation``), center-crop ``crop`` x ``crop``, scale to
    [0, ``scale``], normalise per channel with ``mean``/``std``. Returns [3, H, W] float32 (CHW, RGB).

    Raises:
        NacInputError: the file is missing or is not an image Pillow can decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except FileNotFoundError:
        raise NacInputError(f"image {path}: no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise NacInputError(f"image {path}: cannot decode ({exc})") from None
    if "processor" in preprocess:
        return _hf_preprocess(im, preprocess)
    resample = _pil_filter(preprocess.get("interpolation", "bilinear"))
    size, crop = int(preprocess["resize"]), int(preprocess["crop"])
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(crop, round(w * s)), max(crop, round(h * s))), resample)
    w, h = im.size
    left, top = (w - crop) // 2, (h - crop) // 2
    im = im.crop((left, top, left + crop, top + crop))
    a = np.asarray(im, np.float32) * (float(preprocess.get("scale", 255.0)) / 255.0)
    a = (a - np.asarray(preprocess["mean"], np.float32)) / np.asarray(preprocess["std"], np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _pil_filter(name: str):
    """Pillow's resampling filter called ``name`` (the metadata schema allows only these)."""
    from PIL import Image

    return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}[name]


def _shortest_edge_size(w: int, h: int, short: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``short`` and the other ``int(short * long / short_side)``
    (transformers' ``get_resize_output_image_size`` with ``default_to_square=False``)."""
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def _center_crop(a: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """transformers' ``center_crop`` of an [H, W, C] array: top/left = (size - crop) // 2, zero
    padding around the image first when the crop is larger."""
    h, w = a.shape[:2]
    if ch > h or cw > w:
        nh, nw = max(ch, h), max(cw, w)
        padded = np.zeros((nh, nw) + a.shape[2:], a.dtype)
        top, left = (nh - h) // 2, (nw - w) // 2
        padded[top:top + h, left:left + w] = a
        a, h, w = padded, nh, nw
    top, left = (h - ch) // 2, (w - cw) // 2
    return a[top:top + ch, left:left + cw]


def _hf_preprocess(im, p: dict) -> np.ndarray:
    """What a transformers image processor (its PIL backend) does to one RGB image: resize (to a
    size, or the shortest edge; ConvNeXt's ``crop_pct`` rule), center crop, rescale in float64,
    normalise in float32; returns [3, H, W] float32. See `nac.apps.sources.image_processor_recipe`."""
    resample = _pil_filter(p.get("resample") or "bilinear")
    r = p.get("resize")
    crop = p.get("crop")
    if r is not None and "height" in r:
        im = im.resize((int(r["width"]), int(r["height"])), resample)
    elif r is not None:
        short = int(r["shortest_edge"])
        if p.get("crop_pct") is not None and short < 384:  # ConvNeXt: resize to short / crop_pct, crop short
            im = im.resize(_shortest_edge_size(*im.size, int(short / p["crop_pct"])), resample)
            im = np.asarray(im)
            im = _center_crop(im, short, short)
        elif p.get("crop_pct") is not None:  # ConvNeXt at 384 and above: warp to a square
            im = im.resize((short, short), resample)
        else:
            im = im.resize(_shortest_edge_size(*im.size, short), resample)
    a = np.asarray(im)
    if crop is not None:
        a = _center_crop(a, int(crop["height"]), int(crop["width"]))
    a = a.astype(np.float64) * p["rescale"] if p.get("rescale") is not None else a.astype(np.float64)
    a = a.astype(np.float32)
    if p.get("mean") is not None:
        a = (a - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


@dataclass
class Prediction:
    """One class prediction: ImageNet/class index, label and probability."""

    index: int
    label: str
    probability: float


def classify_images(model: Model, paths, top_k: int = 5) -> list[list[Prediction]]:
    """Top-k classes for each image (batched in one run).

    Raises:
        NacError: the model is not an image-classification model; NacInputError for bad images.
    """
    meta = model.metadata
    if meta.get("task") != "image-classification":
        raise NacError(f"{model.path.name} is a {meta.get('task', 'generic')} model, not image-classification")
    return classify_pixels(model, np.stack([load_image(p, meta["preprocess"]) for p in paths]), top_k)


def classify_pixels(model: Model, batch: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
    """Top-k classes for each preprocessed image of ``batch`` [N, 3, H, W] float32 (`load_image`'s
    output, stacked). Raises NacInputError for a batch the model cannot take."""
    meta = model.metadata
    probs = softmax(model.run([batch])[0])
    labels = meta.get("labels") or []
    out = []
    for row in probs:
        idx = np.argsort(-row, kind="stable")[:top_k]
        out.append([Prediction(int(i), labels[i] if i < len(labels) else str(i), float(row[i])) for i in idx])
    return out


def image_features(model: Model, paths, pool: bool = False) -> list[np.ndarray]:
    """Features of each image (task ``image-feature-extraction``, transformers' pipeline of that
    name): the model's first output (``last_hidden_state`` [tokens, hidden] for a ViT), or with
    ``pool`` its ``pooler_output``.

    Raises:
        NacError: wrong task, or ``pool`` for a model without a pooler; NacInputError: bad image.
    """
    _require_task(model, "image-feature-extraction")
    if not paths:
        raise NacInputError("no image given")
    if pool and "pooler_output" not in model.output_names:
        raise NacError(f"{model.path.name} has no pooled output (pooler_output); call without pool")
    batch = np.stack([load_image(p, model.metadata["preprocess"]) for p in paths])
    outs = dict(zip(model.output_names, model.run([batch])))
    return list(outs["pooler_output" if pool else model.output_names[0]])


# -- text ------------------------------------------------------------------------------------------------
def text_tokenizer(model: Model, pad: bool = True):
    """A copy of the file's TISA tokenizer (`Model.tokenizer`) for a text app: with ``pad``,
    truncating to the model's ``max_length`` and padding a batch to its longest text.

    Raises:
        NacError: the file has no tokenizer.
    """
    base = model.tokenizer
    base.token_to_id("")  # builds the vocabulary map once, on the file's tokenizer: the copies share it
    tok = copy.copy(base)
    if pad:
        tok.enable_truncation(int(model.metadata.get("max_length", 512)))
        tok.enable_padding()
    else:
        tok.no_truncation()
        tok.no_padding()
    return tok


def embed_sentences(model: Model, sentences: list[str]) -> np.ndarray:
    """Sentence embeddings [N, H] float32 for a list of sentences (batched in one run).

    Raises:
        NacError: wrong task or no tokenizer; NacInputError for an empty list.
    """
    _require_task(model, "feature-extraction")
    _, ids, mask = _encode_texts(model, sentences)
    outs = dict(zip(model.output_names, model.run({"input_ids": ids, "attention_mask": mask})))
    return outs[model.metadata.get("embedding_output", model.output_names[0])]


def _require_task(model: Model, task: str) -> None:
    if model.metadata.get("task") != task:
        raise NacError(f"{model.path.name} is a {model.metadata.get('task', 'generic')} model, not {task}")


def _encode_texts(model: Model, texts: list[str]) -> tuple:
    if not texts:
        raise NacInputError("no text given")
    tok = text_tokenizer(model)
    enc = tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    return tok, ids, mask


@dataclass
class Fill:
    """One candidate for a mask: token id, its text, probability, and the filled-in sequence."""

    token: int
    token_str: str
    score: float
    sequence: str


def fill_mask(model: Model, texts: list[str], top_k: int = 5) -> list[list[list[Fill]]]:
    """Top-k fillers for every mask token of every text: ``result[text][mask][rank]``.

    Probabilities are the softmax over the vocabulary at the mask position, as transformers'
    fill-mask pipeline computes them; ``token_str`` is the decoded token.

    Raises:
        NacError: the model is not a fill-mask model; NacInputError: a text has no mask token.
    """
    _require_task(model, "fill-mask")
    tok, ids, mask = _encode_texts(model, texts)
    mask_token = model.metadata["mask_token"]
    mask_id = tok.token_to_id(mask_token)
    for t, row in zip(texts, ids):
        if mask_id not in row:
            raise NacInputError(f"no mask token {mask_token} in {t!r} (write {mask_token} where a word should be guessed)")
    logits = model.run({"input_ids": ids, "attention_mask": mask})[0]
    out = []
    for b, row in enumerate(ids):
        per_text = []
        for pos in np.flatnonzero(row == mask_id):
            probs = softmax(logits[b, pos])
            best = np.argsort(-probs, kind="stable")[:top_k]
            fills = []
            for i in best:
                filled = row[: int(mask[b].sum())].copy()
                filled[pos] = i
                fills.append(Fill(int(i), tok.decode([int(i)]), float(probs[i]),
                                  tok.decode(filled.tolist(), skip_special_tokens=True)))
            per_text.append(fills)
        out.append(per_text)
    return out


@dataclass
class Label:
    """One class of a text classifier: label name and probability."""

    label: str
    score: float


def classify_texts(model: Model, texts: list[str]) -> list[list[Label]]:
    """Every label with its probability, most likely first, for each text (softmax over labels;
    sigmoid per label for multi-label checkpoints; the raw score for regression).

    Raises:
        NacError: the model is not a text-classification model; NacInputError: no text.
    """
    _require_task(model, "text-classification")
    _, ids, mask = _encode_texts(model, texts)
    logits = model.run({"input_ids": ids, "attention_mask": mask})[0].astype(np.float64)
    kind = model.metadata.get("problem_type", "single_label_classification")
    probs = 1 / (1 + np.exp(-logits)) if kind == "multi_label_classification" else \
        logits if kind == "regression" else softmax(logits)
    labels = model.metadata.get("labels") or [str(i) for i in range(logits.shape[1])]
    return [[Label(labels[i], float(p[i])) for i in np.argsort(-p, kind="stable")] for p in probs]


def cosine_matrix(emb: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities [N, N] of row vectors."""
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return e @ e.T


# -- anything else: .npy in, .npy out ---------------------------------------------------------------
def run_npy(model: Model, inputs: list[str], out_dir: Path) -> list[Path]:
    """Run on ``.npy`` files (one per input, in order, or ``name=file.npy``); write one ``.npy`` per output.

    Raises:
        NacInputError: a missing or unreadable file, or inputs that do not match the model.
    """
    feeds: dict[str, np.ndarray] = {}
    names = model.input_names
    for k, item in enumerate(inputs):
        name, eq, file = item.partition("=")
        if not eq:
            name, file = (names[k] if k < len(names) else f"#{k}"), item
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except FileNotFoundError:
            raise NacInputError(f"input file {file}: no such file") from None
        except (ValueError, OSError) as exc:
            raise NacInputError(f"input file {file}: not a .npy array ({exc})") from None
    outs = model.run(feeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, arr in zip(model.output_names, outs):
        p = out_dir / f"{name}.npy"
        np.save(p, arr)
        written.append(p)
    return written
