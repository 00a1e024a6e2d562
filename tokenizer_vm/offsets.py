"""Token offsets: for every token, the [start, end) character span of the original text it covers,
as Hugging Face ``tokenizers`` gives them in ``Encoding.offsets``.

The fast path (:mod:`nac.tokenizer_vm.vm`) transforms strings without keeping track of where
each character came from. Offsets are asked for less often, so they take a second, slower path
that repeats normalisation and pre-tokenisation on an `Aligned` string (each character with the
original span it came from) and then places each token inside its word. The alignment rules are
those of ``tokenizers``' ``NormalizedString`` (normalizer.rs):

- ``transform``: a character that replaces one (change 0) or replaces one and removes ``n``
  following ones (change ``-n``) takes the alignment of the character it replaces; an inserted
  character (change +1) takes the alignment of the character before it, or an empty span at the
  start of the string;
- Unicode normalisation yields those changes as the ``unicode-normalization-alignments`` crate
  does (decomposition: the first character of a decomposition replaces, the rest are inserted;
  canonical reordering moves the changes with their characters; composition: ``k + c -> r``
  gives ``r`` the change of ``k`` plus that of ``c`` minus one);
- ``replace``: the replacement's characters all take the alignment of the last matched character;
- ``prepend``: the prepended characters take the alignment of the first character;
- splitting keeps alignments; a model's token covers the original span from its first
  character's start to its last character's end.

Offsets are character indices into the text that was encoded (``tokenizers`` computes byte
offsets and its Python binding converts them to characters; every alignment covers whole
characters, so the two agree).
"""
from __future__ import annotations

import bisect
import functools
import unicodedata
from typing import TYPE_CHECKING

import numpy as np

from nac.errors import NacError
from nac.tokenizer_vm import kernels as K
from nac.tokenizer_vm.unicode import bytes_to_unicode

if TYPE_CHECKING:
    from nac.tokenizer_vm.vm import Tokenizer

Span = tuple[int, int]

_HANGUL_S, _HANGUL_L, _HANGUL_V, _HANGUL_T = 0xAC00, 0x1100, 0x1161, 0x11A7
_HANGUL_COUNT, _T_COUNT, _N_COUNT = 11172, 28, 588


class Aligned:
    """A (partly) normalised string: its characters and, for each, the [start, end) span of
    original characters it came from. ``base`` is the original offset of the string's start
    (where a character inserted before everything is aligned)."""

    __slots__ = ("chars", "align", "base")

    def __init__(self, chars: list, align: list[Span], base: int):
        self.chars, self.align, self.base = chars, align, base

    @classmethod
    def of(cls, text: str, start: int) -> "Aligned":
        return cls(list(text), [(i, i + 1) for i in range(start, start + len(text))], start)

    def text(self) -> str:
        return "".join(self.chars)

    def slice(self, a: int, b: int) -> "Aligned":
        """Characters [a, b) as their own string (``NormalizedString::slice``)."""
        align = self.align[a:b]
        return Aligned(self.chars[a:b], align, align[0][0] if align else self.base)

    def transform(self, seq, initial: int = 0) -> "Aligned":
        """``NormalizedString::transform``: ``seq`` yields ``(char, change)`` over the whole string,
        after ``initial`` leading characters are removed."""
        pos, chars, align = initial, [], []
        for c, change in seq:
            if change > 0:
                chars.append(c)
                align.append(self.align[pos - 1] if pos >= 1 else (self.base, self.base))
                continue
            align.append(self.align[pos])
            chars.append(c)
            pos += 1 - change
        return Aligned(chars, align, self.base)


# -- normalisers ---------------------------------------------------------------------------------------
class _Unicode:
    """Decomposition and composition limited to the characters the reference's Unicode version
    assigns (others are starters that are left alone, as the fast path treats them)."""

    def __init__(self, assigned: np.ndarray):
        self.known = _in_ranges(assigned)

    def ccc(self, c: str) -> int:
        return unicodedata.combining(c) if self.known(c) else 0

    def decompose(self, c: str, compat: bool) -> list[str]:
        """The full (recursive) decomposition of ``c``, in table order (Hangul algorithmically)."""
        if not self.known(c):
            return [c]
        cp = ord(c)
        if _HANGUL_S <= cp < _HANGUL_S + _HANGUL_COUNT:
            s = cp - _HANGUL_S
            out = [chr(_HANGUL_L + s // _N_COUNT), chr(_HANGUL_V + (s % _N_COUNT) // _T_COUNT)]
            return out + ([chr(_HANGUL_T + s % _T_COUNT)] if s % _T_COUNT else [])
        d = unicodedata.decomposition(c)
        if not d:
            return [c]
        if d.startswith("<"):
            if not compat:
                return [c]
            d = d.split(">", 1)[1]
        return [x for h in d.split() for x in self.decompose(chr(int(h, 16)), compat)]

    def compose(self, a: str, b: str) -> str | None:
        """The primary composite of ``a`` + ``b``, if there is one."""
        if not (self.known(a) and self.known(b)):
            return None
        la, lb = ord(a), ord(b)
        if _HANGUL_L <= la < _HANGUL_L + 19 and _HANGUL_V <= lb < _HANGUL_V + 21:
            return chr(_HANGUL_S + ((la - _HANGUL_L) * 21 + lb - _HANGUL_V) * _T_COUNT)
        if _HANGUL_S <= la < _HANGUL_S + _HANGUL_COUNT and (la - _HANGUL_S) % _T_COUNT == 0 \
                and _HANGUL_T < lb < _HANGUL_T + _T_COUNT:
            return chr(la + lb - _HANGUL_T)
        r = unicodedata.normalize("NFC", a + b)
        if len(r) == 1 and unicodedata.decomposition(r) == f"{la:04X} {lb:04X}":
            return r
        return None

    def decompositions(self, chars: list[str], compat: bool) -> list[tuple[str, int]]:
        """The crate's ``Decompositions`` iterator: (char, change) with canonical reordering (a
        stable sort by combining class of each run that follows a starter)."""
        out: list[tuple[int, str, int]] = []
        ready = 0
        for ch in chars:
            for k, d in enumerate(self.decompose(ch, compat)):
                cls = self.ccc(d)
                if cls == 0:
                    out[ready:] = sorted(out[ready:], key=lambda t: t[0])
                    ready = len(out)
                out.append((cls, d, 0 if k == 0 else 1))
        out[ready:] = sorted(out[ready:], key=lambda t: t[0])
        return [(d, change) for _, d, change in out]

    def recompositions(self, chars: list[str], compat: bool) -> list[tuple[str, int]]:
        """The crate's ``Recompositions`` iterator over the decompositions of ``chars``."""
        out: list[tuple[str, int]] = []
        buffer: list[tuple[str, int]] = []
        composee: tuple[str, int] | None = None
        last_ccc: int | None = None
        for ch, change in self.decompositions(chars, compat):
            cls = self.ccc(ch)
            if composee is None:
                if cls != 0:
                    out.append((ch, change))
                    continue
                composee = (ch, change)
                continue
            if last_ccc is None:
                r = self.compose(composee[0], ch)
                if r is not None:
                    composee = (r, composee[1] + change - 1)
                    continue
                if cls == 0:
                    out.append(composee)
                    composee = (ch, change)
                    continue
                buffer.append((ch, change))
                last_ccc = cls
                continue
            if last_ccc >= cls:  # blocked from the composee
                if cls == 0:
                    out.append(composee)
                    out.extend(buffer)
                    buffer.clear()
                    composee, last_ccc = (ch, change), None
                    continue
                buffer.append((ch, change))
                last_ccc = cls
                continue
            r = self.compose(composee[0], ch)
            if r is not None:
                composee = (r, composee[1] + change - 1)
                continue
            buffer.append((ch, change))
            last_ccc = cls
        if composee is not None:
            out.append(composee)
        out.extend(buffer)
        return out


def _in_ranges(ranges: np.ndarray):
    """A membership test for the characters in sorted [lo, hi] code-point pairs (memoised)."""
    pairs = ranges.reshape(-1, 2).tolist()
    lo = [a for a, _ in pairs]

    @functools.lru_cache(maxsize=65536)
    def member(c: str) -> bool:
        cp = ord(c)
        k = bisect.bisect_right(lo, cp) - 1
        return k >= 0 and cp <= pairs[k][1]
    return member


def _normaliser(tok: "Tokenizer", ins: dict):
    """An aligned twin of one NORM.* instruction: ``Aligned -> (Aligned, lost_left)``."""
    from nac.tokenizer_vm.vm import _WS, _Regex

    op, t = ins["op"], tok.program.tables
    if op in ("NORM.NFC", "NORM.NFD", "NORM.NFKC", "NORM.NFKD"):
        uni, compat = _Unicode(t[ins["assigned_table"]]), op in ("NORM.NFKC", "NORM.NFKD")
        compose = op in ("NORM.NFC", "NORM.NFKC")

        def nf(a):
            if all(c < "\x80" for c in a.chars):  # ASCII is already normal
                return a, False
            return a.transform((uni.recompositions if compose else uni.decompositions)(a.chars, compat)), False
        return nf
    if op == "NORM.LOWER":
        src, off, dst = t["lower_src"], t["lower_off"], t["lower_dst"]
        table = {chr(c): "".join(map(chr, dst[off[i]:off[i + 1]].tolist())) for i, c in enumerate(src.tolist())}
        return lambda a: (a.transform((m, int(k > 0)) for c in a.chars for k, m in enumerate(table.get(c, c))), False)
    if op in ("NORM.DROP", "NORM.MAP_SPACE", "NORM.PAD"):
        member = _in_ranges(t[ins["ranges_table"]])
        if op == "NORM.DROP":  # filter: kept characters keep their own alignment
            return lambda a: (Aligned([c for c in a.chars if not member(c)],
                                      [s for c, s in zip(a.chars, a.align) if not member(c)], a.base), False)
        if op == "NORM.MAP_SPACE":
            return lambda a: (Aligned([" " if member(c) else c for c in a.chars], a.align, a.base), False)
        return lambda a: (a.transform(x for c in a.chars
                                      for x in (((" ", 0), (c, 1), (" ", 1)) if member(c) else ((c, 0),))), False)
    if op == "NORM.REPLACE":
        content = ins["content"]
        if ins["kind"] == "string":
            pattern = ins["pattern"]

            def spans(s):
                out, k = [], s.find(pattern) if pattern else -1
                while k >= 0:
                    out.append((k, k + len(pattern)))
                    k = s.find(pattern, k + len(pattern))
                return out
        else:
            spans = _Regex(ins["pattern"], tok._where).spans
        return lambda a: (_replace(a, spans(a.text()), content), False)
    if op == "NORM.STRIP":
        left, right = ins["left"], ins["right"]

        def strip(a):
            n, i, j = len(a.chars), 0, len(a.chars)
            while left and i < n and a.chars[i] in _WS:
                i += 1
            while right and j > i and a.chars[j - 1] in _WS:
                j -= 1
            return Aligned(a.chars[i:j], a.align[i:j], a.base), i > 0
        return strip
    if op == "NORM.PREPEND":
        text = ins["text"]
        return lambda a: (_prepend(a, text), False)
    if op == "NORM.PRECOMPILED":
        from nac.tokenizer_vm.precompiled import charsmap_of

        charsmap = charsmap_of(t, ins["map"])
        return lambda a: (a.transform(charsmap.transformations(a.text())), False)
    raise NacError(f"offsets: no alignment rule for {op}")


def _replace(a: Aligned, matches: list[Span], content: str) -> Aligned:
    """``NormalizedString::replace``: each match's characters give way to ``content``, whose
    characters take the alignment of the match's last character."""
    chars, align, last = [], [], 0
    for s, e in matches:
        chars += a.chars[last:s]
        align += a.align[last:s]
        at = a.align[e - 1] if e >= 1 else (a.base, a.base)
        chars += list(content)
        align += [at] * len(content)
        last = e
    return Aligned(chars + a.chars[last:], align + a.align[last:], a.base)


def _prepend(a: Aligned, text: str) -> Aligned:
    """``NormalizedString::prepend``: the new characters share the first character's alignment."""
    if not a.chars:
        return a
    return Aligned(list(text) + a.chars, [a.align[0]] * len(text) + a.align, a.base)


# -- pre-tokenisers ----------------------------------------------------------------------------------------
Word = tuple  # (Aligned, segment index, first)


def _pre_tokeniser(tok: "Tokenizer", ins: dict):
    """An aligned twin of one PRE.* instruction: list of words -> list of words. The array-level
    steps (all but PRE.REGEX) see no empty words, as in the fast path."""
    from nac.tokenizer_vm.vm import SPLIT_KINDS, _Regex, _split_by_matches

    op = ins["op"]
    if op == "PRE.REGEX":
        pat, beh = _Regex(ins["pattern"], tok._where), K.BEHAVIOURS[ins["behaviour"]]
        return lambda words: [(w.slice(a, b), k, f and a == 0) for w, k, f in words
                              for a, b in _split_by_matches(w.text(), pat.spans(w.text()), beh, ins["invert"])]
    if op == "PRE.SPLIT":
        idx, blocks = tok._cls
        lit = np.array([ord(c) for c in ins.get("literal", "")], np.int32)

        def split(words):
            cps, starts, ends = _code_points(words)
            first = np.array([f for _, _, f in words], np.bool_)
            s, e, f, src = K.split_words(cps, starts, ends, first, SPLIT_KINDS[ins["kind"]], idx, blocks,
                                         int(ins.get("classes", 0)), lit, K.BEHAVIOURS[ins["behaviour"]],
                                         bool(ins.get("invert", False)))
            return [(words[p][0].slice(a - starts[p], b - starts[p]), words[p][1], bool(ff))
                    for a, b, ff, p in zip(s.tolist(), e.tolist(), f.tolist(), src.tolist())]
        return split
    if op == "PRE.PREFIX_SPACE":
        return lambda words: [(w if w.chars[0] == " " else _prepend(w, " "), k, f) for w, k, f in words]
    if op == "PRE.METASPACE":
        rep, scheme = ins["replacement"], ins["prepend"]

        def metaspace(words):
            out = []
            for w, k, f in words:
                starts_with = w.chars[0] in (" ", rep)
                w = Aligned([rep if c == " " else c for c in w.chars], w.align, w.base)
                if not starts_with and (scheme == "always" or (scheme == "first" and f)):
                    w = _prepend(w, rep)
                out.append((w, k, f))
            return out
        return metaspace
    if op == "PRE.UTF8":  # one unit per UTF-8 byte, each aligned with its character (a unit that is
        # already a byte value is a code point again, as the kernel sees a second PRE.UTF8)
        def utf8(c) -> bytes:
            return (chr(c) if isinstance(c, int) else c).encode("utf-8", "surrogatepass")
        return lambda words: [(Aligned([b for c in w.chars for b in utf8(c)],
                                       [s for c, s in zip(w.chars, w.align) for _ in utf8(c)], w.base), k, f)
                              for w, k, f in words]
    raise NacError(f"offsets: no alignment rule for {op}")


def _code_points(words) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    units = [[c if isinstance(c, int) else ord(c) for c in w.chars] for w, _, _ in words]
    lens = np.array([len(u) for u in units], np.int64)
    ends = np.cumsum(lens)
    cps = np.array([c for u in units for c in u], np.int32)
    return cps, ends - lens, ends


# -- tokens inside words ------------------------------------------------------------------------------------
class _Placer:
    """Places a word's tokens on its units (characters, or bytes after PRE.UTF8)."""

    def __init__(self, tok: "Tokenizer"):
        self.tok = tok
        model = next(i for i in tok.program.code if i["op"].startswith("MODEL."))
        self.kind = model["op"]
        self.unk = model.get("unk")
        self.prefix = "".join(map(chr, model.get("prefix") or []))
        self.suffix = "".join(map(chr, model.get("suffix") or []))
        byte_ids = tok.program.tables.get("byte_ids")
        self.byte_ids = {i for i in byte_ids.tolist() if i >= 0} if byte_ids is not None else set()
        self.byte_level = any(i["op"] == "PRE.UTF8" for i in tok.program.code)
        self.inverse = {c: b for b, c in bytes_to_unicode().items()}

    def units(self, token: str) -> list:
        return [self.inverse.get(c, -1) for c in token] if self.byte_level else list(token)

    def place(self, word: Aligned, ids: list[int]) -> list[Span]:
        n = len(word.chars)
        if self.kind in ("MODEL.WORDLEVEL",) or (self.kind == "MODEL.WORDPIECE" and ids == [self.unk]):
            return [(0, n)] * len(ids)
        spans, cur, byte_in_char = [], 0, 0
        for k, i in enumerate(ids):
            if i in self.byte_ids and not self.byte_level:  # one UTF-8 byte of the character at cur
                spans.append((cur, cur + 1))
                byte_in_char += 1
                if cur < n and byte_in_char >= len(word.chars[cur].encode("utf-8", "surrogatepass")):
                    cur, byte_in_char = cur + 1, 0
                continue
            if i == self.unk and self.kind != "MODEL.WORDPIECE":
                end = self._unk_end(word, ids[k + 1:], cur)
                spans.append((cur, end))
                cur = end
                continue
            length = self._match(word, self.tok.id_to_token(i) or "", cur, k)
            spans.append((cur, cur + length))
            cur += length
        if cur != n or not all(0 <= a < b <= n for a, b in spans):  # a program whose model and text disagree
            raise NacError(f"offsets: the tokens of {''.join(map(str, word.chars))[:60]!r} do not cover it")
        return spans

    def value(self, word: Aligned, i: int, a: int, b: int) -> str:
        """Token ``i``'s text as the reference's ``Encoding.tokens`` has it, for a token on units
        [a, b) of ``word``: the vocabulary string, but for Unigram's unknown token the (normalised)
        text it covers, as Hugging Face's Unigram model gives it."""
        if i == self.unk and self.kind == "MODEL.UNIGRAM":
            return "".join(map(str, word.chars[a:b]))
        return self.tok.id_to_token(i) or ""

    def _match(self, word: Aligned, token: str, cur: int, k: int) -> int:
        forms = [token]
        if self.prefix and token.startswith(self.prefix) and k > 0:
            forms.insert(0, token[len(self.prefix):])
        if self.suffix and token.endswith(self.suffix):
            forms += [f[:-len(self.suffix)] for f in list(forms)]
        for f in forms:
            u = self.units(f)
            if u and word.chars[cur:cur + len(u)] == u:
                return len(u)
        raise NacError(f"offsets: token {token!r} does not match the text at unit {cur}")

    def _unk_end(self, word: Aligned, rest: list[int], cur: int) -> int:
        """An unknown token covers a run of units: up to where the remaining tokens start (their
        lengths are known when no other unknown token follows; otherwise the next token's first
        match after ``cur``)."""
        n = len(word.chars)
        if self.unk not in rest and not any(i in self.byte_ids for i in rest):
            need = sum(len(self.units(self._strip(self.tok.id_to_token(i) or ""))) for i in rest)
            return max(cur + 1, n - need)
        if not rest:
            return n
        u = self.units(self._strip(self.tok.id_to_token(rest[0]) or ""))
        for end in range(cur + 1, n):
            if word.chars[end:end + len(u)] == u:
                return end
        return n

    def _strip(self, token: str) -> str:
        if self.prefix and token.startswith(self.prefix):
            token = token[len(self.prefix):]
        if self.suffix and token.endswith(self.suffix):
            token = token[:-len(self.suffix)]
        return token


class _Aligner:
    """The aligned twins of a tokenizer's normalisers and pre-tokenisers and its token placer,
    built once per tokenizer (tables and regular expressions are compiled here, not per text)."""

    def __init__(self, tok: "Tokenizer"):
        code = tok.program.code
        self.norm = [_normaliser(tok, i) for i in code if i["op"].startswith("NORM.")]
        self.pre = [(i["op"] != "PRE.REGEX", _pre_tokeniser(tok, i)) for i in code if i["op"].startswith("PRE.")]
        self.placer = _Placer(tok)

    def pre_tokenise(self, segments: list[tuple[Aligned, bool]]) -> list[Word]:
        """Segments -> words (Aligned, segment index, first), without empty words."""
        words = [(a, k, f) for k, (a, f) in enumerate(segments)]
        for array_level, step in self.pre:
            if array_level:
                words = [w for w in words if w[0].chars]
            words = step(words)
        return [w for w in words if w[0].chars]


def _aligner(tok: "Tokenizer") -> _Aligner:
    """The tokenizer's `_Aligner`, built on first use (two threads may both build one; either is right)."""
    a = getattr(tok, "_aligner", None)
    if a is None:
        a = tok._aligner = _Aligner(tok)
    return a


def text_offsets(tok: "Tokenizer", text: str) -> tuple[list[int], list[Span], list[str], list[int]]:
    """Token ids of ``text`` before the template (as the fast path gives them), each token's
    [start, end) character span in ``text``, each token's text as the reference's
    ``Encoding.tokens`` has it (an added token: the text it matched, spaces it strips included),
    and each token's word: the index of the pre-tokeniser split (or added token) it came from.

    Raises:
        NacError: the aligned path disagrees with the fast path (a bug; never silently wrong).
    """
    from nac.tokenizer_vm.vm import _find_added

    aligner = _aligner(tok)
    plan: list = []  # ("added", id, span) or ("segment", index)
    segments: list[tuple[Aligned, bool]] = []
    raw = _find_added(text, tok._added_re, tok._added) if tok._added_re else [(0, len(text), None)]
    for s, e, added in raw:
        if added is not None:
            plan.append(("added", added, (s, e), text[s:e]))
            continue
        if s == e:
            continue
        a, lost_left = Aligned.of(text[s:e], s), False
        for step in aligner.norm:
            a, lost = step(a)
            lost_left |= lost
        first = s == 0 and not lost_left
        pieces = _find_added(a.text(), tok._added_norm_re, tok._added) if tok._added_norm_re else \
            [(0, len(a.chars), None)]
        for s2, e2, added2 in pieces:
            if e2 <= s2:
                continue
            piece = a.slice(s2, e2)
            if added2 is not None:
                plan.append(("added", added2, (piece.align[0][0], piece.align[-1][1]), piece.text()))
            else:
                plan.append(("segment", len(segments)))
                segments.append((piece, first and s2 == 0))
    words = aligner.pre_tokenise(segments)
    per_segment: dict[int, tuple[list[int], list[Span], list[int], list[str]]] = {}
    if words:
        cps, starts, ends = _code_points(words)
        ids, counts = tok._model(cps, starts, ends)
        placer, at = aligner.placer, 0
        for k, ((w, seg, _), c) in enumerate(zip(words, counts.tolist())):
            wid = ids[at:at + int(c)].tolist()
            at += int(c)
            got = per_segment.setdefault(seg, ([], [], [], []))
            spans = placer.place(w, wid)
            got[0].extend(wid)
            got[1].extend((w.align[a][0], w.align[b - 1][1]) for a, b in spans)
            got[2].extend([k] * len(wid))
            got[3].extend(placer.value(w, i, a, b) for i, (a, b) in zip(wid, spans))
    out_ids, out_offsets, values, word_of = [], [], [], []
    word, last = -1, None
    for item in plan:
        if item[0] == "added":
            out_ids.append(item[1])
            out_offsets.append(item[2])
            values.append(item[3])
            word += 1
            word_of.append(word)
            last = None
        else:
            i, o, w, v = per_segment.get(item[1], ([], [], [], []))
            out_ids += i
            out_offsets += o
            values += v
            for k in w:  # words numbered in order across segments and added tokens
                if k != last:
                    word, last = word + 1, k
                word_of.append(word)
    return out_ids, out_offsets, values, word_of


def trim_offsets(tokens: list[str], offsets: list[Span], add_prefix_space: bool) -> list[Span]:
    """``tokenizers``' ByteLevel ``process_offsets`` (RoBERTa's and ByteLevel's ``trim_offsets``):
    leading and trailing spaces (``Ġ`` or whitespace) of a token leave its span, except the one
    space ``add_prefix_space`` put before the first token."""
    space = bytes_to_unicode()[ord(" ")]
    out = []
    for k, (t, (s, e)) in enumerate(zip(tokens, offsets)):
        lead = len(t) - len(t.lstrip(space + "".join(c for c in t if c.isspace())))
        trail = len(t) - len(t.rstrip(space + "".join(c for c in t if c.isspace())))
        if lead and (k == 0 or s == 0) and add_prefix_space and lead == 1:
            lead = 0
        if lead:
            s = min(s + lead, e)
        if trail and e >= trail:
            e = max(e - trail, s)
        out.append((s, e))
    return out
