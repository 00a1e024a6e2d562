"""``nac.pipeline(task, path)``: task-level callables over a `.nac` file, in the spirit of
transformers' pipelines. Nothing here imports torch."""
from __future__ import annotations

from pathlib import Path

from nac.apps import tasks
from nac.apps.question_answering import answer_questions
from nac.apps.token_classification import classify_tokens
from nac.apps.zero_shot import classify_images_zero_shot, classify_zero_shot
from nac.engine import Model, load
from nac.errors import NacError
from nac.format.generation import TEXT2TEXT_TASKS

_APPS = {
    "fill-mask": lambda m, x, **kw: tasks.fill_mask(m, x, kw.get("top_k", 5)),
    "text-classification": lambda m, x, **kw: tasks.classify_texts(m, x),
    "feature-extraction": lambda m, x, **kw: tasks.embed_sentences(m, x),
    "image-classification": lambda m, x, **kw: tasks.classify_images(m, x, kw.get("top_k", 5)),
    "token-classification": lambda m, x, **kw: classify_tokens(m, x, **kw),
    "zero-shot-classification": lambda m, x, **kw: classify_zero_shot(m, x, **kw),
    "zero-shot-image-classification": lambda m, x, **kw: classify_images_zero_shot(m, x, **kw),
    "image-feature-extraction": lambda m, x, **kw: tasks.image_features(m, x, **kw),
    "question-answering": lambda m, x, **kw: answer_questions(m, [_field(d, "question") for d in x],
                                                              [_field(d, "context") for d in x], **kw),
    "text-to-image": None,  # called whole: see Pipeline.__call__
    "translation": lambda m, x, **kw: _text2text(m, x, "translation_text", **kw),
    "summarization": lambda m, x, **kw: _text2text(m, x, "summary_text", **kw),
    "text2text-generation": lambda m, x, **kw: _text2text(m, x, "generated_text", **kw),
}


def _text2text(model: Model, texts: list, key: str, **kwargs) -> list[list[dict]]:
    """transformers' shape: per input, a list of ``{key: text}`` (one per returned sequence)."""
    from nac.apps.generate import text2text

    return [[{key: t} for t in outs] for outs in text2text(model, texts, **kwargs)]


def _field(item, key: str) -> str:
    if not isinstance(item, dict) or not isinstance(item.get(key), str):
        from nac.errors import NacInputError

        raise NacInputError(f"question-answering takes {{'question': ..., 'context': ...}} items; {key!r} is missing")
    return item[key]


class Pipeline:
    """Calls the task app on one input (returns its result) or a list (returns a list).

    Attributes:
        task: the pipeline task; model: the loaded `Model`.
    """

    def __init__(self, task: str, model: Model):
        self.task, self.model = task, model

    def __call__(self, inputs=None, **kwargs):
        if self.task == "question-answering" and inputs is None and "question" in kwargs:
            inputs = {"question": kwargs.pop("question"), "context": kwargs.pop("context", None)}
        if self.task == "text-to-image":  # diffusers' shape: a list of images for a prompt or a list of prompts
            from nac.apps.text_to_image import TextToImage

            return TextToImage(self.model)(inputs, **kwargs)
        single = isinstance(inputs, (str, Path, dict))
        out = _APPS[self.task](self.model, [inputs] if single else list(inputs), **kwargs)
        return out[0] if single else out


def pipeline(task: str, model) -> Pipeline:
    """A pipeline for ``task`` over ``model`` (a path or a loaded `Model`).

    ``fill-mask`` returns, per text, one list of `tasks.Fill` per mask token; ``text-classification``
    a list of `tasks.Label`; ``feature-extraction`` embeddings; ``image-classification`` a list of
    `tasks.Prediction`; ``token-classification`` a list of `Entity` (keyword
    ``aggregation_strategy``, ``ignore_labels``); ``zero-shot-classification`` a `ZeroShot`
    (``candidate_labels``, ``hypothesis_template``, ``multi_label``);
    ``zero-shot-image-classification`` a list of `tasks.Label` (``candidate_labels``,
    ``hypothesis_template``); ``image-feature-extraction`` an array (``pool``);
    ``question-answering`` a list of `Answer` for ``question=..., context=...`` or for
    ``{"question", "context"}`` items (``top_k``, ``doc_stride``, ``max_answer_len``,
    ``max_seq_len``, ``handle_impossible_answer``, ``align_to_words``); ``translation``,
    ``summarization`` and ``text2text-generation`` a list of ``{"translation_text" /
    "summary_text" / "generated_text": str}`` per input (keywords as `nac.apps.generate.generate`:
    ``num_beams``, ``max_new_tokens``, ``num_return_sequences``, ...); ``text-to-image`` a list
    of PIL images for a prompt or a list of prompts, called like diffusers' pipeline
    (``negative_prompt``, ``num_inference_steps``, ``guidance_scale``, ``height``, ``width``,
    ``latents``, ``seed``, ``scheduler``: see `nac.apps.text_to_image.TextToImage`). Keywords and results follow
    the transformers pipelines of the same names (transformers 4's for question-answering).

    Raises:
        NacError: unknown task, or a model exported for a different task.
    """
    if task not in _APPS:
        raise NacError(f"unknown pipeline task {task!r}; choose from {sorted(_APPS)}")
    m = model if isinstance(model, Model) else load(model)
    if task in TEXT2TEXT_TASKS and m.metadata.get("task") in TEXT2TEXT_TASKS:
        return Pipeline(task, m)  # one text-to-text model serves all three, as in transformers
    if m.metadata.get("task") != task:
        raise NacError(f"{m.path.name} was exported for {m.metadata.get('task', 'no particular task')}, not {task}")
    return Pipeline(task, m)
