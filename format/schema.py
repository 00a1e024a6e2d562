"""The written schemas of the JSON documents a `.nac` file holds, and their validation.

Every document read from a file (the graph section, the metadata section, the external-weights
reference, a TISA program's header) is checked against one of these JSON Schemas (draft 7)
before any field is used, so a wrong type, a missing field or an absurd size is a
`NacFormatError` that names the field, never a ``KeyError`` or ``TypeError`` deeper down. Sizes
are bounded here; ranges that depend on other fields (an id below the vocabulary size, a shape
that matches its op) are checked by the code that reads them (`nac.format.graph`,
`nac.format.shapes`, `nac.tokenizer_vm.program`).

Validation uses `fastjsonschema` (the schemas are compiled once, on first use). The schemas
allow unknown keys where SPEC.md lets a newer minor version add them.
"""
from __future__ import annotations

import os
import threading

from nac.errors import NacFormatError

_NAME = {"type": "string", "minLength": 1, "maxLength": 1024}
_UINT = {"type": "integer", "minimum": 0, "maximum": 1 << 53}
_DIM = {"type": ["integer", "string"], "minimum": 0, "maximum": 1 << 53, "minLength": 1, "maxLength": 1024}

GRAPH = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "NAC graph section",
    "type": "object",
    "required": ["inputs", "outputs", "dims", "values", "params", "nodes"],
    "properties": {
        "inputs": {"type": "array", "items": _NAME, "maxItems": 4096},
        "outputs": {"type": "array", "items": _NAME, "minItems": 1, "maxItems": 4096},
        "dims": {
            "type": "object", "maxProperties": 256,
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
            "additionalProperties": {
                "type": "object",
                "properties": {"min": _UINT, "max": {"type": ["integer", "null"], "minimum": 0, "maximum": 1 << 53}},
            },
        },
        "values": {
            "type": "array", "maxItems": 1 << 20,
            "items": {
                "type": "object",
                "required": ["name", "dtype", "shape"],
                "properties": {
                    "name": _NAME,
                    "dtype": {"enum": ["float32", "float16", "int64", "int32", "int8", "uint8", "bool"]},
                    "shape": {"type": "array", "items": _DIM, "maxItems": 16},
                    "quant": {
                        "type": "object", "required": ["scheme", "scale", "shape"],
                        "properties": {"scheme": {"type": "string", "maxLength": 64}, "scale": _NAME,
                                       "shape": {"type": "array", "items": _UINT, "minItems": 2, "maxItems": 2}},
                    },
                },
            },
        },
        "params": {"type": "array", "items": _NAME, "maxItems": 1 << 20},
        "param_aliases": {"type": "object", "additionalProperties": _NAME},
        "nodes": {
            "type": "array", "maxItems": 1 << 20,
            "items": {
                "type": "object",
                "required": ["op", "inputs", "outputs"],
                "properties": {
                    "op": {"type": "string", "maxLength": 64},
                    "inputs": {"type": "array", "maxItems": 4096,
                               "items": {"type": "string", "maxLength": 1024}},
                    "outputs": {"type": "array", "items": _NAME, "minItems": 1, "maxItems": 64},
                    "attrs": {"type": "object", "maxProperties": 64},
                    "source": {"type": "string", "maxLength": 4096},
                },
            },
        },
    },
}

_STR = {"type": "string", "maxLength": 4096}
_IDS = {"anyOf": [_UINT, {"type": "null"}, {"type": "array", "items": _UINT, "maxItems": 64}]}
_NUM3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}  # per RGB channel
_FILTER = {"enum": ["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]}
_SIDE = {"type": "integer", "minimum": 1, "maximum": 16384}
_SIZE = {"oneOf": [{"type": "object", "required": ["height", "width"], "additionalProperties": False,
                    "properties": {"height": _SIDE, "width": _SIDE}},
                   {"type": "object", "required": ["shortest_edge"], "additionalProperties": False,
                    "properties": {"shortest_edge": _SIDE}}]}

METADATA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "NAC metadata section",
    "type": "object",
    "properties": {
        "task": {"type": "string", "maxLength": 64},
        "model": _STR,
        "labels": {"type": "array", "items": _STR, "maxItems": 1 << 20},
        "problem_type": {"enum": ["single_label_classification", "multi_label_classification", "regression"]},
        "max_length": {"type": "integer", "minimum": 1, "maximum": 1 << 24},
        "normalize": {"type": "boolean"},
        "embedding_output": _NAME,
        "mask_token": _STR, "cls_token": _STR, "sep_token": _STR, "pad_token": _STR,
        "chat_template": {"type": "string", "maxLength": 1 << 20},
        "eos_token_id": _IDS, "pad_token_id": _IDS, "bos_token_id": _IDS,
        "vocab_size": {"type": "integer", "minimum": 1, "maximum": 1 << 31},
        "cache": {
            "type": "object", "required": ["layers", "kv_heads", "head_dim"],
            "properties": {k: {"type": "integer", "minimum": 1, "maximum": 1 << 16}
                           for k in ("layers", "kv_heads", "head_dim")},
        },
        "generation": {  # the generation contract (nac.format.generation)
            "type": "object",
            "required": ["architecture", "methods", "cache", "vocab_size", "max_length"],
            "properties": {
                "architecture": {"enum": ["decoder-only", "encoder-decoder"]},
                "methods": {"type": "object", "maxProperties": 8, "additionalProperties": {
                    "type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"}},
                "cache": {
                    "type": "object", "required": ["layers", "kv_heads", "head_dim"],
                    "properties": {k: {"type": "integer", "minimum": 1, "maximum": 1 << 16}
                                   for k in ("layers", "kv_heads", "head_dim")},
                },
                "vocab_size": {"type": "integer", "minimum": 1, "maximum": 1 << 31},
                "max_length": {"type": "integer", "minimum": 1, "maximum": 1 << 24},
                "eos_token_id": _IDS, "pad_token_id": _IDS, "bos_token_id": _IDS, "decoder_start_token_id": _IDS,
                "forced_bos_token_id": _IDS, "forced_eos_token_id": _IDS,
                "defaults": {
                    "type": "object",
                    "properties": {
                        "max_new_tokens": {"type": "integer", "minimum": 0, "maximum": 1 << 24},
                        "min_new_tokens": {"type": "integer", "minimum": 0, "maximum": 1 << 24},
                        "num_beams": {"type": "integer", "minimum": 1, "maximum": 256},
                        "length_penalty": {"type": "number"},
                        "no_repeat_ngram_size": {"type": "integer", "minimum": 0, "maximum": 1 << 16},
                        "early_stopping": {"enum": [True, False, "never"]},
                        "repetition_penalty": {"type": "number", "exclusiveMinimum": 0},
                        "do_sample": {"type": "boolean"},
                        "temperature": {"type": "number", "exclusiveMinimum": 0},
                        "top_k": {"type": "integer", "minimum": 0, "maximum": 1 << 31},
                        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    },
                },
            },
        },
        "diffusion": {  # a text-to-image / class-to-image file (nac.apps.text_to_image)
            "type": "object",
            "required": ["conditioning", "latent_channels", "sample_size", "vae_scale_factor", "scheduler",
                         "schedulers"],
            "properties": {
                "conditioning": {"enum": ["text", "class"]},
                "latent_channels": {"type": "integer", "minimum": 1, "maximum": 64},
                "sample_size": {"type": "integer", "minimum": 1, "maximum": 4096},
                "vae_scale_factor": {"type": "integer", "minimum": 1, "maximum": 64},
                "size_multiple": {"type": "integer", "minimum": 1, "maximum": 4096},
                "scheduler": {"enum": ["ddim", "euler", "pndm", "dpmsolver++"]},
                "schedulers": {
                    "type": "object", "minProperties": 1,
                    "propertyNames": {"enum": ["ddim", "euler", "pndm", "dpmsolver++"]},
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "num_train_timesteps": {"type": "integer", "minimum": 1, "maximum": 10000},
                            "beta_start": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                            "beta_end": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                            "trained_betas": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 10000, "items": {
                                "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}}]},
                            "steps_offset": {"type": "integer", "minimum": 0, "maximum": 10000},
                            "solver_order": {"type": "integer", "minimum": 1, "maximum": 3},
                            "clip_sample_range": {"type": "number", "exclusiveMinimum": 0},
                        },
                    },
                },
                "guidance_scale": {"type": "number"},
                "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": 1000},
                "pad_token_id": {"type": "integer", "minimum": 0, "maximum": 1 << 31},
            },
        },
        "preprocess": {  # an ImageNet-style recipe (resize/crop sizes) or an image processor's (objects)
            "type": "object",
            "properties": {
                "processor": {"type": "string", "maxLength": 128},
                "resize": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 16384}, {"type": "null"}, _SIZE]},
                "crop": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 16384}, {"type": "null"}, _SIZE]},
                "crop_pct": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
                "interpolation": _FILTER,
                "resample": _FILTER,
                "scale": {"type": "number"},
                "rescale": {"type": ["number", "null"]},
                "mean": {"anyOf": [_NUM3, {"type": "null"}]},
                "std": {"anyOf": [{"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3,
                                   "maxItems": 3}, {"type": "null"}]},
                "layout": {"enum": ["NCHW", "NHWC"]},
            },
            "if": {"not": {"required": ["processor"]}},
            "then": {"required": ["resize", "crop", "mean", "std"],
                     "properties": {"resize": {"type": "integer"}, "crop": {"type": "integer"}}},
            "else": {"required": ["resize", "crop", "resample", "rescale", "mean", "std"]},
        },
        "tokenizer": {
            "type": "object",
            "properties": {"format": {"type": "string", "maxLength": 64}, "model": {"type": "string", "maxLength": 64},
                           "vocab_size": {"type": "integer", "minimum": 0, "maximum": 1 << 31},
                           "fingerprint": {"type": "object", "properties": {
                               "version": {"type": "integer"},
                               "ids": {"type": "array", "maxItems": 4096,
                                       "items": {"type": "integer", "minimum": 0, "maximum": 1 << 31}}}}},
        },
        "compile": {"type": "object"},
    },
}

EXTERNAL_WEIGHTS = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "NAC external-parameters section",
    "type": "object",
    "required": ["path", "size", "crc32"],
    "properties": {"path": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^/\\\\\\x00]+$"},
                   "size": _UINT, "crc32": {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF}},
}

METHODS = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "NAC methods section",
    "type": "object",
    "required": ["methods"],
    "properties": {
        "methods": {
            "type": "array", "minItems": 2, "maxItems": 64,
            "items": {"type": "object", "required": ["name"],
                      "properties": {"name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
                                     "graph": {"type": "object"}}},
        },
    },
}

SCHEMAS = {"graph": GRAPH, "metadata": METADATA, "external-parameters": EXTERNAL_WEIGHTS, "methods": METHODS}
_compiled: dict = {}
_lock = threading.Lock()


def register(name: str, schema: dict) -> None:
    """Add a schema (e.g. the TISA program header's, from `nac.tokenizer_vm.program`)."""
    SCHEMAS[name] = schema


def check_integers(doc, sch: dict, where: str, path: str = "(document)") -> None:
    """Refuse a float wherever ``sch`` says "integer".

    JSON Schema's "integer" also matches 1.0, and fastjsonschema follows the standard, but the code
    that reads these documents needs Python ints (``chr``, ``range``, indexing). Call after
    `validate`; understands type, properties, additionalProperties, items (one schema or a list)
    and anyOf/oneOf (the value must pass in one branch).

    Raises:
        NacFormatError: naming ``where`` and the field's path.
    """
    if not isinstance(sch, dict):
        return
    branches = sch.get("anyOf") or sch.get("oneOf")
    if branches:
        errors = []
        for b in branches:
            try:
                check_integers(doc, b, where, path)
                break
            except NacFormatError as exc:
                errors.append(exc)
        else:
            raise errors[0]
    t = sch.get("type")
    if isinstance(doc, float) and (t == "integer" or (isinstance(t, list) and "integer" in t and "number" not in t)):
        raise NacFormatError(f"{where}: field {path} must be an integer, not {doc!r}")
    if isinstance(doc, dict):
        props, extra = sch.get("properties") or {}, sch.get("additionalProperties")
        for k, v in doc.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                check_integers(v, sub, where, f"{path}.{k}")
    elif isinstance(doc, list):
        items = sch.get("items")
        if isinstance(items, dict):
            for k, v in enumerate(doc):
                check_integers(v, items, where, f"{path}[{k}]")
        elif isinstance(items, list):
            for k, (v, sub) in enumerate(zip(doc, items)):
                check_integers(v, sub, where, f"{path}[{k}]")


def _compile(sch: dict):
    """fastjsonschema's validator for ``sch``. Generating and compiling its Python source costs
    ~50 ms for the metadata schema at every start, so the compiled code object is cached (marshal)
    in this package's ``__pycache__``, keyed by the schema, fastjsonschema's version and the
    interpreter, as Python caches a module's bytecode there; without write access, no cache."""
    import hashlib
    import json
    import marshal
    import sys
    from pathlib import Path

    import fastjsonschema

    key = hashlib.sha256(json.dumps([sch, fastjsonschema.VERSION, sys.version], sort_keys=True,
                                    default=str).encode()).hexdigest()[:24]
    path = Path(__file__).parent / "__pycache__" / f"schema-{key}.marshal"
    code = None
    try:
        code = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        pass
    if code is None:
        code = compile(fastjsonschema.compile_to_code(sch), f"<schema {key}>", "exec")
        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(marshal.dumps(code))
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
        except OSError:
            pass
    scope: dict = {}
    exec(code, scope)  # the code fastjsonschema generated from our own schema, as fastjsonschema.compile runs it
    return scope["validate"]


def validate(doc, name: str, where: str) -> None:
    """Check ``doc`` against the schema ``name`` (a key of `SCHEMAS`).

    Raises:
        NacFormatError: ``doc`` does not conform; the message names ``where``, the field (as a
            path such as ``nodes[3].attrs``) and the rule it breaks.
    """
    fn = _compiled.get(name)
    if fn is None:
        with _lock:
            fn = _compiled.get(name) or _compile(SCHEMAS[name])
            _compiled[name] = fn
    import fastjsonschema

    try:
        fn(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        field = (exc.name or "data").replace("data.", "", 1).replace("data", "(document)", 1)
        raise NacFormatError(f"{where}: {name} field {field}: {exc.message.replace(exc.name or '', '').strip()}"
                             ) from None
    except RecursionError:
        raise NacFormatError(f"{where}: {name} document is nested too deeply") from None
