"""A TISA program: the instructions and data tables of one compiled tokenizer, and its bytes.

On disk a program is a safetensors blob: the tables are its tensors, and its ``__metadata__``
holds ``{"tisa": <JSON>}`` with the format version, the instruction list, the added tokens and
the default truncation and padding. ``format/SPEC.md`` (section "tokenizer") is normative.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from nac.errors import NacFormatError


def _finite(x) -> bool:
    """A JSON number (int of any size, or float) that is a finite float64."""
    try:
        return math.isfinite(float(x))
    except OverflowError:  # an integer beyond float64's range
        return False

TISA_VERSION = 1
FORMAT = "tisa-1"

#: Every opcode, its stage and what it does (the disassembler prints these; SPEC.md lists them).
OPCODES: dict[str, tuple[str, str]] = {
    "ADDED.SPLIT":     ("added", "split out added/special tokens (raw text, then each normalised piece)"),
    "NORM.NFC":        ("normalize", "Unicode NFC"),
    "NORM.NFD":        ("normalize", "Unicode NFD"),
    "NORM.NFKC":       ("normalize", "Unicode NFKC"),
    "NORM.NFKD":       ("normalize", "Unicode NFKD"),
    "NORM.LOWER":      ("normalize", "per-character lowercase (table lower_*)"),
    "NORM.DROP":       ("normalize", "remove characters of a class (BERT clean text, strip accents)"),
    "NORM.MAP_SPACE":  ("normalize", "map characters of a class to U+0020"),
    "NORM.PAD":        ("normalize", "surround characters of a class with spaces (BERT CJK)"),
    "NORM.REPLACE":    ("normalize", "replace a literal or a regular expression"),
    "NORM.STRIP":      ("normalize", "strip whitespace left and/or right"),
    "NORM.PREPEND":    ("normalize", "prepend a string to non-empty pieces"),
    "NORM.PRECOMPILED": ("normalize", "SentencePiece precompiled_charsmap rules, per grapheme cluster (tables MAP_*)"),
    "PRE.REGEX":       ("pre_tokenize", "split words by a regular expression (string level)"),
    "PRE.SPLIT":       ("pre_tokenize", "split words by a class, literal or built-in pattern"),
    "PRE.PREFIX_SPACE": ("pre_tokenize", "prepend a space to words not starting with one"),
    "PRE.METASPACE":   ("pre_tokenize", "spaces to the replacement character, prepend it"),
    "PRE.UTF8":        ("pre_tokenize", "words to UTF-8 byte values (byte-level)"),
    "MODEL.WORDPIECE": ("model", "greedy longest-match-first with a continuation prefix"),
    "MODEL.BPE":       ("model", "byte-pair merges by rank"),
    "MODEL.UNIGRAM":   ("model", "Viterbi over piece log-probabilities"),
    "MODEL.WORDLEVEL": ("model", "whole-word lookup"),
    "POST.TEMPLATE":   ("post", "special-token template for single and pair inputs"),
    "POST.TRIM_OFFSETS": ("post", "leave leading/trailing spaces out of token offsets (ByteLevel trim_offsets)"),
    "DEC.WORDPIECE":   ("decode", "join continuation pieces, optional cleanup"),
    "DEC.BYTELEVEL":   ("decode", "byte characters back to UTF-8"),
    "DEC.METASPACE":   ("decode", "replacement character back to spaces"),
    "DEC.BYTE_FALLBACK": ("decode", "<0xXX> tokens back to bytes"),
    "DEC.FUSE":        ("decode", "concatenate all tokens"),
    "DEC.STRIP":       ("decode", "strip a character from token starts/ends"),
    "DEC.REPLACE":     ("decode", "replace a literal in every token"),
    "DEC.BPE":         ("decode", "end-of-word suffix to spaces"),
    "DEC.CTC":         ("decode", "collapse repeats, drop the pad token"),
}


@dataclass
class Program:
    """One compiled tokenizer.

    Attributes:
        code: the instructions in execution order, each ``{"op": OPCODE, ...operands}``; table
            operands name entries of ``tables``.
        tables: numpy arrays (int32/int64/uint16/float64) the instructions read.
        added: added tokens ``{"id", "content", "single_word", "lstrip", "rstrip",
            "normalized", "special"}`` in id order.
        truncation, padding: the tokenizer.json defaults (``None``: off).
        source: what it was compiled from (for ``nac info``).
    """

    code: list[dict]
    tables: dict[str, np.ndarray]
    added: list[dict] = field(default_factory=list)
    truncation: dict | None = None
    padding: dict | None = None
    source: str = ""

    def to_bytes(self) -> bytes:
        """The program as a safetensors blob (tables as tensors, the rest in ``__metadata__``)."""
        from safetensors.numpy import save

        doc = {"version": TISA_VERSION, "code": self.code, "added": self.added,
               "truncation": self.truncation, "padding": self.padding, "source": self.source}
        meta = {"tisa": json.dumps(doc, ensure_ascii=False, separators=(",", ":"))}
        return save({k: np.ascontiguousarray(v) for k, v in self.tables.items()}, metadata=meta)

    @classmethod
    def from_bytes(cls, blob, where: str = "tokenizer section") -> "Program":
        """Read a program written by :meth:`to_bytes`; tables are zero-copy views of ``blob``.

        Raises:
            NacFormatError: not a TISA blob, a newer version, or a malformed table.
        """
        from nac.format.container import parse_json, view_safetensors

        buf = memoryview(blob)
        try:
            (hlen,) = struct.unpack_from("<Q", buf, 0)
        except struct.error:
            raise NacFormatError(f"{where}: not a TISA tokenizer program (too short)") from None
        if hlen > len(buf) - 8:
            raise NacFormatError(f"{where}: not a TISA tokenizer program (header of {hlen} bytes in {len(buf)})")
        header = parse_json(bytes(buf[8:8 + hlen]), f"{where}: header")
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("tisa"), str):
            raise NacFormatError(f"{where}: not a TISA tokenizer program (no __metadata__.tisa)")
        doc = parse_json(meta["tisa"].encode("utf-8", "surrogatepass"), f"{where}: program")
        if not isinstance(doc, dict) or doc.get("version") != TISA_VERSION:
            raise NacFormatError(f"{where}: TISA version {doc.get('version') if isinstance(doc, dict) else '?'} "
                                 f"is not supported (this NAC reads version {TISA_VERSION})")
        tables = view_safetensors(buf, 0, len(buf), where, {"I16": np.int16, "F64": np.float64})
        validate_program(doc, tables, where)
        return cls(doc["code"], tables, doc.get("added") or [], doc.get("truncation"), doc.get("padding"),
                   doc.get("source", ""))

    def disassemble(self) -> str:
        """A human-readable listing: one line per instruction, then the tables and their sizes."""
        lines = [f"TISA v{TISA_VERSION} program ({self.source or 'unknown source'})"]
        stage = None
        for n, ins in enumerate(self.code):
            st = OPCODES[ins["op"]][0]
            if st != stage:
                lines.append(f"  ; {st}")
                stage = st
            ops = ", ".join(f"{k}={_short(v)}" for k, v in ins.items() if k != "op")
            lines.append(f"  {n:3d}  {ins['op']:<18} {ops}")
        if self.added:
            special = sum(1 for a in self.added if a.get("special"))
            lines.append(f"  ; {len(self.added)} added tokens ({special} special): "
                         + " ".join(repr(a["content"]) for a in self.added[:8]) + (" …" if len(self.added) > 8 else ""))
        if self.truncation:
            lines.append(f"  ; truncation {self.truncation}")
        if self.padding:
            lines.append(f"  ; padding {self.padding}")
        lines.append("  ; tables")
        total = 0
        for name, arr in self.tables.items():
            total += arr.nbytes
            lines.append(f"  {name:<16} {str(arr.dtype):<8} {'×'.join(map(str, arr.shape)) or 'scalar':>10}  {arr.nbytes:>10,} B")
        lines.append(f"  {'total':<16} {'':<8} {'':>10}  {total:>10,} B")
        return "\n".join(lines)


def _short(v) -> str:
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= 60 else s[:57] + "…"


# ------------------------------------------------------------------------------------------------
# validation of a program read from a file
# ------------------------------------------------------------------------------------------------
_BEHAVIOURS = ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]
_S = {"type": "string", "maxLength": 1 << 16}
_B = {"type": "boolean"}
_I = {"type": "integer", "minimum": -1, "maximum": (1 << 31) - 1}
_CPS = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 0x10FFFF}, "maxItems": 256}
_T = {"type": "string", "maxLength": 64}  # a table name
_TEMPLATE = {"type": "array", "maxItems": 64, "items": {"anyOf": [
    {"type": "array", "items": [{"const": "S"}, {"type": "array", "items": _I, "maxItems": 64}, _I],
     "minItems": 3, "maxItems": 3},
    {"type": "array", "items": [{"enum": ["A", "B"]}, _I], "minItems": 2, "maxItems": 2}]}}

#: The operands of each opcode (JSON Schema), as the compiler writes them and the VM reads them.
OPERANDS: dict[str, dict] = {
    "ADDED.SPLIT": {"count": _I},
    **{f"NORM.{f}": {"unicode": _S, "assigned_table": _T} for f in ("NFC", "NFD", "NFKC", "NFKD")},
    "NORM.LOWER": {},
    **{f"NORM.{f}": {"classes": _I, "chars": {"type": "array"}, "ranges_table": _T}
       for f in ("DROP", "MAP_SPACE", "PAD")},
    "NORM.REPLACE": {"kind": {"enum": ["string", "regex"]}, "pattern": _S, "content": _S},
    "NORM.STRIP": {"left": _B, "right": _B},
    "NORM.PREPEND": {"text": _S},
    "NORM.PRECOMPILED": {"map": _T, "rules": {"type": "integer", "minimum": 0, "maximum": 1 << 20}},
    "PRE.REGEX": {"pattern": _S, "behaviour": {"enum": _BEHAVIOURS}, "invert": _B},
    "PRE.SPLIT": {"kind": {"enum": ["class", "literal", "gpt2", "words"]}, "classes": _I, "literal": _S,
                  "behaviour": {"enum": _BEHAVIOURS}, "invert": _B},
    "PRE.PREFIX_SPACE": {},
    "PRE.METASPACE": {"replacement": {"type": "string", "minLength": 1, "maxLength": 1},
                      "prepend": {"enum": ["never", "always", "first"]}},
    "PRE.UTF8": {},
    "MODEL.WORDPIECE": {"keys_table": _T, "unk": _I, "prefix": _CPS,
                        "max_chars": {"type": "integer", "minimum": 0, "maximum": 1 << 30}},
    "MODEL.WORDLEVEL": {"keys_table": _T, "unk": _I},
    "MODEL.BPE": {"keys_table": _T, "merges_table": _T, "unk": _I, "prefix": _CPS, "suffix": _CPS,
                  "byte_fallback": _B, "fuse_unk": _B, "ignore_merges": _B, "merges": _I},
    "MODEL.UNIGRAM": {"keys_table": _T, "scores_table": _T, "unk": _I, "unk_score": {"type": "number"},
                      "byte_fallback": _B, "max_len": {"type": "integer", "minimum": 1, "maximum": 1 << 16}},
    "POST.TEMPLATE": {"single": _TEMPLATE, "pair": _TEMPLATE},
    "POST.TRIM_OFFSETS": {"prefix_space": _B},
    "DEC.WORDPIECE": {"prefix": _S, "cleanup": _B},
    "DEC.BYTELEVEL": {},
    "DEC.METASPACE": {"replacement": _S, "prepend": {"enum": ["never", "always", "first"]}},
    "DEC.BYTE_FALLBACK": {},
    "DEC.FUSE": {},
    "DEC.STRIP": {"content": {"type": "string", "minLength": 1, "maxLength": 1},
                  "start": {"type": "integer", "minimum": 0, "maximum": 1 << 16},
                  "stop": {"type": "integer", "minimum": 0, "maximum": 1 << 16}},
    "DEC.REPLACE": {"kind": {"enum": ["string", "regex"]}, "pattern": _S, "content": _S},
    "DEC.BPE": {"suffix": _S},
    "DEC.CTC": {"pad_token": _S, "word_delimiter_token": _S, "cleanup": _B},
}

DOCUMENT_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "TISA program header",
    "type": "object",
    "required": ["version", "code"],
    "properties": {
        "version": {"type": "integer"},
        "code": {"type": "array", "maxItems": 1024, "items": {
            "type": "object", "required": ["op"], "properties": {"op": {"enum": list(OPERANDS)}}}},
        "added": {"type": "array", "maxItems": 1 << 20, "items": {
            "type": "object", "required": ["id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"],
            "properties": {"id": {"type": "integer", "minimum": 0, "maximum": (1 << 31) - 1},
                           "content": {"type": "string", "minLength": 1, "maxLength": 1 << 12},
                           "single_word": _B, "lstrip": _B, "rstrip": _B, "normalized": _B, "special": _B}}},
        "truncation": {"anyOf": [{"type": "null"}, {
            "type": "object", "required": ["max_length"],
            "properties": {"max_length": {"type": "integer", "minimum": 0, "maximum": 1 << 20},
                           "stride": {"type": "integer", "minimum": 0, "maximum": 1 << 20},
                           "strategy": {"enum": ["LongestFirst", "OnlyFirst", "OnlySecond"]},
                           "direction": {"enum": ["Left", "Right"]}}}]},
        "padding": {"anyOf": [{"type": "null"}, {
            "type": "object",
            "properties": {"length": {"anyOf": [{"type": "null"},
                                                {"type": "integer", "minimum": 0, "maximum": 1 << 20}]},
                           "direction": {"enum": ["Left", "Right"]},
                           "pad_id": {"type": "integer", "minimum": 0, "maximum": (1 << 31) - 1},
                           "pad_type_id": {"type": "integer", "minimum": 0, "maximum": (1 << 31) - 1},
                           "pad_token": _S,
                           "pad_to_multiple_of": {"anyOf": [{"type": "null"},
                                                            {"type": "integer", "minimum": 1, "maximum": 1 << 16}]}}}]},
        "source": {"type": "string", "maxLength": 1 << 16},
    },
}

_MODEL_TABLES = {"keys": np.int32, "keys_off": np.int64, "keys_id": np.int32, "keys_hash": np.int32}


def _fail(where: str, what: str) -> NacFormatError:
    return NacFormatError(f"{where}: {what}")


def _table(tables: dict, name: str, dtype, where: str, ndim: int = 1) -> np.ndarray:
    t = tables.get(name)
    if t is None:
        raise _fail(where, f"table {name!r} is missing")
    if (dtype is not None and t.dtype != np.dtype(dtype)) or t.ndim != ndim:
        raise _fail(where, f"table {name!r} must be a {ndim}-D {np.dtype(dtype) if dtype else 'integer'} array, "
                           f"not {t.dtype}{list(t.shape)}")
    return t


def _offsets(off: np.ndarray, size: int, name: str, where: str) -> None:
    """``off`` starts at 0, never decreases and ends at ``size``."""
    if off.size < 1 or off[0] != 0 or off[-1] != size or (off.size > 1 and (np.diff(off) < 0).any()):
        raise _fail(where, f"table {name!r} is not a list of offsets from 0 to {size} that never decrease")


def _code_points(a: np.ndarray, name: str, where: str) -> None:
    if a.size and ((a < 0).any() or (a > 0x10FFFF).any() or ((a >= 0xD800) & (a <= 0xDFFF)).any()):
        raise _fail(where, f"table {name!r} holds values that are not Unicode scalar values")


def _ids(a, n: int, what: str, where: str, allow_none: bool = False) -> None:
    a = np.asarray(a, np.int64)
    lo = -1 if allow_none else 0
    if a.size and ((a < lo).any() or (a >= n).any()):
        bad = a[(a < lo) | (a >= n)][0]
        raise _fail(where, f"{what} holds id {int(bad)}, outside the vocabulary of {n} ids")


def validate_program(doc: dict, tables: dict[str, np.ndarray], where: str) -> None:
    """Check a TISA program read from a file before any of it is used: the header against
    `DOCUMENT_SCHEMA` (opcodes and their operand types), then every table the instructions use
    (dtype and rank, code points valid, offsets inside their tables and in order, ids below the
    vocabulary size, hash tables consistent with their keys), so that the Numba kernels can
    never index outside an array or loop forever.

    Raises:
        NacFormatError: naming the table, instruction or field that is wrong.
    """
    from nac.format import schema
    from nac.tokenizer_vm import kernels as K

    if isinstance(doc, dict) and isinstance(doc.get("code"), list):
        for k, ins in enumerate(doc["code"]):
            if isinstance(ins, dict) and isinstance(ins.get("op"), str) and ins["op"] not in OPERANDS:
                raise _fail(where, f"instruction {k} has unknown opcode {ins['op'][:64]!r} (this NAC knows "
                                   f"{len(OPERANDS)} opcodes; the program may be from a newer NAC)")
    schema.register("tisa", DOCUMENT_SCHEMA)
    schema.validate(doc, "tisa", where)
    stages = [OPCODES[i["op"]][0] for i in doc["code"]]
    order = ["added", "normalize", "pre_tokenize", "model", "post", "decode"]
    ops = [i["op"] for i in doc["code"]]
    if stages.count("model") != 1 or stages.count("added") > 1 or ops.count("POST.TEMPLATE") > 1 \
            or ops.count("POST.TRIM_OFFSETS") > 1:
        raise _fail(where, "a program needs exactly one MODEL instruction and at most one ADDED.SPLIT, "
                           "POST.TEMPLATE and POST.TRIM_OFFSETS")
    if any(order.index(a) > order.index(b) for a, b in zip(stages, stages[1:])):
        raise _fail(where, f"instructions are out of stage order ({' -> '.join(stages)}); expected {' -> '.join(order)}")
    pre = [i["op"] for i in doc["code"] if OPCODES[i["op"]][0] == "pre_tokenize"]
    if "PRE.REGEX" in pre and any(op != "PRE.REGEX" for op in pre[:max(k for k, op in enumerate(pre) if op == "PRE.REGEX")]):
        raise _fail(where, "PRE.REGEX (a string-level step) must come before the array-level pre-tokenisers")
    for k, ins in enumerate(doc["code"]):
        name = f"tisa {ins['op']}"
        if name not in schema.SCHEMAS:
            ops = OPERANDS[ins["op"]]
            schema.register(name, {"type": "object", "properties": {"op": {"const": ins["op"]}, **ops},
                                   "required": ["op", *ops], "additionalProperties": False})
        schema.validate(ins, name, f"{where}: instruction {k}")
        schema.check_integers(ins, schema.SCHEMAS[name], f"{where}: instruction {k}")
    schema.check_integers({k: v for k, v in doc.items() if k != "added"}, DOCUMENT_SCHEMA, where)
    if any(type(a["id"]) is not int for a in doc.get("added") or []):
        raise _fail(where, "an added token's id is not an integer")
    idx = _table(tables, "class_index", np.int16, where)  # exact dtypes: the kernels are compiled for these
    blocks = _table(tables, "class_blocks", np.int16, where)
    if idx.size != 0x1100 or blocks.size % 256 or blocks.size == 0 \
            or idx.min() < 0 or int(idx.max()) * 256 + 256 > blocks.size:
        raise _fail(where, "tables 'class_index'/'class_blocks' do not form a character-class table "
                           "(4352 block indices into 256-entry integer blocks)")
    vocab = _table(tables, "vocab", np.int32, where)
    off = _table(tables, "vocab_off", np.int64, where)
    _code_points(vocab, "vocab", where)
    _offsets(off, vocab.size, "vocab_off", where)
    n = off.size - 1
    _ids(_table(tables, "vocab_missing", np.int32, where), n, "table 'vocab_missing'", where)
    for a in doc.get("added") or []:
        _ids([a["id"]], n, "an added token", where)
    if doc.get("padding") and doc["padding"].get("pad_id") is not None:
        _ids([doc["padding"]["pad_id"]], max(n, 1), "the padding's pad_id", where)
    for ins in doc["code"]:
        op = ins["op"]
        what = f"instruction {op}"
        for k, v in ins.items():
            if k.endswith("_table") and v not in tables:
                raise _fail(where, f"{what} names missing table {v!r}")
        for key in ("ranges_table", "assigned_table"):
            if key in ins:
                r = _table(tables, ins[key], np.int32, where)
                if r.size % 2 or (r.size and ((r < 0).any() or (r > 0x10FFFF).any() or (r[0::2] > r[1::2]).any())):
                    raise _fail(where, f"{what}: table {ins[key]!r} is not a list of code-point ranges")
        if op == "NORM.PRECOMPILED":
            m = ins["map"]
            keys, koff, vals, voff = (_table(tables, f"{m}_{t}", dt, where) for t, dt in
                                      (("keys", np.int32), ("keys_off", np.int64), ("values", np.int32),
                                       ("values_off", np.int64)))
            _code_points(keys, f"{m}_keys", where)
            _code_points(vals, f"{m}_values", where)
            _offsets(koff, keys.size, f"{m}_keys_off", where)
            _offsets(voff, vals.size, f"{m}_values_off", where)
            if koff.size != voff.size or koff.size - 1 != ins["rules"] or (np.diff(koff) == 0).any():
                raise _fail(where, f"{what}: tables {m}_* do not hold {ins['rules']} rules with non-empty keys")
        if op == "NORM.LOWER":
            src, loff, dst = (_table(tables, t, np.int32, where)
                              for t in ("lower_src", "lower_off", "lower_dst"))
            _code_points(src, "lower_src", where)
            _code_points(dst, "lower_dst", where)
            if loff.size != src.size + 1:
                raise _fail(where, "table 'lower_off' must have one entry more than 'lower_src'")
            _offsets(loff, dst.size, "lower_off", where)
        if "keys_table" in ins:
            keys, koff, kid, htab = (_table(tables, t, dt, where) for t, dt in _MODEL_TABLES.items())
            if keys.size and ((keys < 0).any() or (keys > 0x10FFFF).any()):
                raise _fail(where, "table 'keys' holds values outside 0..0x10FFFF")
            _offsets(koff, keys.size, "keys_off", where)
            if kid.size != koff.size - 1:
                raise _fail(where, "table 'keys_id' must have one id per key")
            _ids(kid, n, "table 'keys_id'", where)
            if not np.array_equal(htab, K.build_hash(keys, koff)):  # equal shapes and entries
                raise _fail(where, "table 'keys_hash' does not match the keys it indexes")
            _ids([ins["unk"]], n, f"{what} operand 'unk'", where, allow_none=op in ("MODEL.BPE", "MODEL.UNIGRAM"))
        if op == "MODEL.BPE":
            mk = _table(tables, "merge_keys", np.int64, where)
            mr, mn = _table(tables, "merge_rank", np.int32, where), _table(tables, "merge_new", np.int32, where)
            if mk.size < 16 or mk.size & (mk.size - 1) or mr.size != mk.size or mn.size != mk.size \
                    or not (mk == -1).any():
                raise _fail(where, "tables 'merge_keys'/'merge_rank'/'merge_new' are not one open-addressing table")
            used = mk != -1
            _ids(mn[used], n, "table 'merge_new'", where)
            _ids(np.concatenate([mk[used] >> 32, mk[used] & 0xFFFFFFFF]), n, "table 'merge_keys'", where)
            if (mr[used] < 0).any():
                raise _fail(where, "table 'merge_rank' holds a negative rank")
        if op in ("MODEL.BPE", "MODEL.UNIGRAM"):
            b = _table(tables, "byte_ids", np.int32, where)
            if b.size != 256:
                raise _fail(where, "table 'byte_ids' must have 256 entries")
            _ids(b, n, "table 'byte_ids'", where, allow_none=True)
        if op == "MODEL.UNIGRAM":
            sc = _table(tables, ins["scores_table"], np.float64, where)
            if sc.ndim != 1 or sc.size <= int(tables["keys_id"].max(initial=-1)):
                raise _fail(where, "table 'scores' has fewer scores than the vocabulary has pieces")
            if not np.isfinite(sc).all() or not _finite(ins["unk_score"]):
                raise _fail(where, "Unigram scores must be finite numbers")
        if op == "POST.TEMPLATE":
            if any(item[0] == "B" for item in ins["single"]):
                raise _fail(where, f"{what}: the single-text template refers to a second text (B)")
            for item in ins["single"] + ins["pair"]:
                if item[0] == "S":
                    _ids(item[1], n, "the special-token template", where)
