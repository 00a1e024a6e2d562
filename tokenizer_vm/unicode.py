"""Character classes and case mapping, as compact tables stored in every TISA program.

Hugging Face ``tokenizers`` decides splits and filters with Unicode properties (Rust's
``char::is_whitespace``, the ``unicode_categories`` crate, Oniguruma's ``\\p{L}``/``\\w``).
The compiler computes those properties once, with the ``regex`` package's Unicode database,
into a two-level table (a 256-code-point block index plus the distinct blocks), so the VM's
Numba kernels look a class up in two array reads and never consult the host's ``unicodedata``.
"""
from __future__ import annotations

import sys
from functools import lru_cache

import numpy as np

#: Class bits (one ``int16`` per code point).
WS = 1          # White_Space (Rust char::is_whitespace, Oniguruma \s)
CONTROL = 2     # BERT's is_control: Cc, Cf, Co, Cs except \t \n \r
PUNCT = 4       # BERT's is_punctuation: ASCII punctuation or general category P*
CJK = 8         # BERT's CJK ideograph ranges
MN = 16         # general category Mn (BERT strips these when stripping accents)
MARK = 32       # general category M* (the StripAccents normaliser removes these)
LETTER = 64     # \p{L}
NUMBER = 128    # \p{N} (also Rust char::is_numeric)
WORD = 256      # Oniguruma \w: L | M | N | Pc

CLASS_NAMES = {"WS": WS, "CONTROL": CONTROL, "PUNCT": PUNCT, "CJK": CJK, "MN": MN, "MARK": MARK,
               "LETTER": LETTER, "NUMBER": NUMBER, "WORD": WORD}

_CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
BLOCK = 256
#: Unicode version of the crate ``unicode_categories`` (BERT's control / punctuation / Mn tests).
LEGACY_VERSION = "8.0"
#: Unicode version of the crate ``unicode-normalization-alignments`` (NFC/NFD/NFKC/NFKD).
NORMALIZATION_VERSION = "11.0"
#: Characters whose general category changed since LEGACY_VERSION, with their class bits then.
_LEGACY_CATEGORY = {0x1734: MN, 0x1885: 0, 0x1886: 0, 0xA9BD: 0, 0x111C9: PUNCT, 0x1171E: MN}


def legacy_ranges(version: str = LEGACY_VERSION) -> list[tuple[int, int]]:
    """Inclusive ranges of the code points assigned in Unicode ``version`` (``data/present_in_*.txt``,
    written by ``data/make_present_in.pl`` from Perl's Unicode database)."""
    from importlib.resources import files

    text = files("nac.tokenizer_vm").joinpath("data", f"present_in_{version}.txt").read_text()
    return [tuple(int(x, 16) for x in line.split()) for line in text.splitlines() if line and not line.startswith("#")]


@lru_cache(maxsize=1)
def class_table() -> tuple[np.ndarray, np.ndarray]:
    """The class table as ``(index int16[4352], blocks int16[n*256])``: the classes of code point
    ``c`` are ``blocks[index[c >> 8] * 256 + (c & 255)]``. Built in about half a second."""
    import regex

    flat = np.zeros(sys.maxunicode + 1, np.uint16)
    everything = "".join(map(chr, range(sys.maxunicode + 1)))

    def mark(pattern: str, bit: int) -> None:
        for m in regex.finditer(pattern + "+", everything):
            flat[m.start():m.end()] |= bit

    mark(r"\p{White_Space}", WS)
    mark(r"[\p{Cc}\p{Cf}\p{Co}\p{Cs}]", CONTROL)  # not Cn: unassigned code points are kept
    flat[[9, 10, 13]] &= ~np.uint16(CONTROL)
    mark(r"\p{P}", PUNCT)
    for lo, hi in _CJK_RANGES:
        flat[lo:hi + 1] |= CJK
    mark(r"\p{Mn}", MN)
    mark(r"\p{M}", MARK)
    mark(r"\p{L}", LETTER)
    mark(r"\p{N}", NUMBER)
    mark(r"[\p{L}\p{M}\p{N}\p{Pc}]", WORD)
    # BERT's control/punctuation/nonspacing-mark tests come from the Rust crate unicode_categories,
    # whose tables are of Unicode LEGACY_VERSION: characters assigned later are none of the three.
    legacy = np.zeros(flat.size, bool)
    for lo, hi in legacy_ranges():
        legacy[lo:hi + 1] = True
    flat[~legacy] &= ~np.uint16(CONTROL | PUNCT | MN)
    for c, bits in _LEGACY_CATEGORY.items():
        flat[c] = (flat[c] & ~np.uint16(CONTROL | PUNCT | MN)) | bits
    ascii_punct = [c for c in range(0x21, 0x7F) if not chr(c).isalnum()]
    flat[ascii_punct] |= PUNCT
    blocks = flat.reshape(-1, BLOCK)
    uniq, index = np.unique(blocks, axis=0, return_inverse=True)
    return index.astype(np.int16).reshape(-1), np.ascontiguousarray(uniq.reshape(-1)).astype(np.int16)


def lowercase_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-character lowercase mapping (Rust ``char::to_lowercase``, no context such as final
    sigma) for every code point whose lowercase differs: ``(src int32[n], offsets int32[n+1],
    dst int32[m])``."""
    src, off, dst = [], [0], []
    for c in range(sys.maxunicode + 1):
        if 0xD800 <= c <= 0xDFFF:
            continue
        low = chr(c).lower()
        if low != chr(c):
            src.append(c)
            dst.extend(map(ord, low))
            off.append(len(dst))
    return np.array(src, np.int32), np.array(off, np.int32), np.array(dst, np.int32)


def ranges_of(index: np.ndarray, blocks: np.ndarray, bits: int) -> list[tuple[int, int]]:
    """Inclusive code-point ranges whose classes intersect ``bits`` (used to build ``re``
    character classes for the string-level normalisers)."""
    flat = blocks.reshape(-1, BLOCK)[index].reshape(-1)
    hit = (flat & bits) != 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], hit.view(np.int8), [0]])))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (openai/gpt-2 ``encoder.py``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
