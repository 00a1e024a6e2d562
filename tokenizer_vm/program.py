"""A TISA program: the instructions and data tables of one compiled tokenizer, and its bytes.

On disk a program is a safetensors blob: the tables are its tensors, and its ``__metadata__``
holds ``{"tisa": <JSON>}`` with the format version, the instruction list, the added tokens and
the default truncation and padding. ``format/SPEC.md`` (section "tokenizer") is normative.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

from nac.errors import NacFormatError

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
        from nac.format.container import view_safetensors

        buf = memoryview(blob)
        try:
            (hlen,) = struct.unpack_from("<Q", buf, 0)
            header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
            doc = json.loads(header["__metadata__"]["tisa"])
        except (struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise NacFormatError(f"{where}: not a TISA tokenizer program ({type(exc).__name__}: {exc})") from None
        if not isinstance(doc, dict) or doc.get("version") != TISA_VERSION:
            raise NacFormatError(f"{where}: TISA version {doc.get('version') if isinstance(doc, dict) else '?'} "
                                 f"is not supported (this NAC reads version {TISA_VERSION})")
        tables = view_safetensors(buf, 0, len(buf), where, {"I16": np.int16, "F64": np.float64})
        code = doc.get("code")
        if not isinstance(code, list) or not all(isinstance(i, dict) and i.get("op") in OPCODES for i in code):
            bad = [i.get("op") if isinstance(i, dict) else i for i in code or []]
            raise NacFormatError(f"{where}: unknown TISA instruction in {bad}")
        for ins in code:
            for k, v in ins.items():
                if k.endswith("_table") and v not in tables:
                    raise NacFormatError(f"{where}: instruction {ins['op']} names missing table {v!r}")
        return cls(code, tables, doc.get("added") or [], doc.get("truncation"), doc.get("padding"),
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
