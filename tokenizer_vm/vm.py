"""The TISA virtual machine: runs a compiled tokenizer program, with no ``tokenizers`` import.

Encoding a batch goes stage by stage over all texts at once. Added tokens are split out and each
remaining piece is normalised at the string level (Python's C string routines); the pieces then
become one ``int32`` code-point array, and every pre-tokeniser step and the model run over the
whole batch in one compiled call (`kernels.encode_wordpiece`, `encode_bpe`, `encode_unigram`:
the steps are data, `kernels.pre_tokenize` runs them), so no Python runs per word or per step.
(A Python regex pre-tokeniser, or the WordLevel model, takes the same steps one kernel call at a
time.) Templates, truncation and padding are list operations at the end. Decoding is string work on the token texts.
"""
from __future__ import annotations

import os
import re
import threading
import unicodedata

import numpy as np

from nac.engine.threads import num_threads, split_range
from nac.errors import NacError, NacFormatError, NacInputError
from nac.tokenizer_vm import kernels as K
from nac.tokenizer_vm.unicode import bytes_to_unicode
from nac.tokenizer_vm.program import Program


class _Derived:
    """An `Encoding` list (``type_ids``, ``attention_mask``, ``special_tokens_mask``) held in the
    slot of the same name with a leading underscore, built from the shared template on first
    read (or before the first assignment, so that the other two are built too)."""

    def __set_name__(self, owner, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, enc, owner=None):
        if enc is None:
            return self
        if enc._type_ids is None:
            enc._derive()
        return getattr(enc, self.slot)

    def __set__(self, enc, value: list[int]) -> None:
        if enc._type_ids is None:
            enc._derive()
        setattr(enc, self.slot, value)


class Encoding:
    """One encoded text (or pair), as Hugging Face ``tokenizers.Encoding`` gives it.

    Attributes:
        ids: token ids (after template, truncation, padding).
        type_ids: segment ids (0 for the first text, the template's type for the second).
        attention_mask: 1 for real tokens, 0 for padding.
        special_tokens_mask: 1 for tokens the template or padding added, and for special added tokens.
        tokens: the token strings (vocabulary entries).
        offsets: for each token, the ``(start, end)`` character span of its text (of the first
            text, or of the second for tokens of a pair's second text) that it covers; ``(0, 0)``
            for template and padding tokens. Computed on first use (a slower path that tracks
            alignments through normalisation); raises NacError if it ever disagreed with the ids.
        parts: the template's pieces in order: ``("S", count)`` for special tokens, ``("A" | "B",
            range of indices before the template)`` for a text's tokens (a contiguous range after
            truncation).
        texts: the text (or the two texts) that was encoded.

    An encoding of one text through a template of specials around ``$A`` (or no template) keeps
    only its ids and the shared template (``single``: `Tokenizer`'s ``(head, tail, type of $A)``,
    ``n`` ids of the text); ``type_ids``, the two masks and ``parts`` are built on first read. A
    list of encodings a caller keeps then holds two objects the garbage collector tracks per
    text (this and its ids), not seven, and encoding many short lines does not pay for
    collections of lists nobody reads.
    """

    __slots__ = ("ids", "tokenizer", "pad_left", "pad_right", "pad_token", "_type_ids", "_attention_mask",
                 "_special_tokens_mask", "_parts", "_texts", "_single", "_n", "_offsets", "_tokens")

    def __init__(self, ids: list[int], type_ids: list[int] | None = None, attention_mask: list[int] | None = None,
                 special_tokens_mask: list[int] | None = None, tokenizer: "Tokenizer" = None, parts: tuple = (),
                 texts: tuple | str = (), *, single: tuple | None = None, n: int = 0):
        self.ids, self.tokenizer = ids, tokenizer
        if single is None and type_ids is None:  # ids alone: one text without a template
            single, n = _BARE, len(ids)
        if single is not None:
            type_ids = parts = None  # derived on first read
        else:
            attention_mask = [1] * len(ids) if attention_mask is None else attention_mask
            special_tokens_mask = [0] * len(ids) if special_tokens_mask is None else special_tokens_mask
        self._type_ids, self._attention_mask, self._special_tokens_mask = type_ids, attention_mask, special_tokens_mask
        self._parts, self._texts, self._single, self._n = parts, texts, single, n
        self.pad_left = self.pad_right = 0
        self.pad_token = ""
        self._offsets = self._tokens = None

    def __repr__(self) -> str:
        return (f"Encoding(ids={self.ids!r}, type_ids={self.type_ids!r}, attention_mask={self.attention_mask!r}, "
                f"special_tokens_mask={self.special_tokens_mask!r})")

    def __eq__(self, other) -> bool:
        if not isinstance(other, Encoding):
            return NotImplemented
        return (self.ids, self.type_ids, self.attention_mask, self.special_tokens_mask, self.parts, self.texts) == (
            other.ids, other.type_ids, other.attention_mask, other.special_tokens_mask, other.parts, other.texts)

    __hash__ = None

    def _derive(self) -> None:
        """Build the lists the shared single-text template implies (before any padding: `Tokenizer._pad`
        reads them through the properties before it extends them)."""
        head, tail, type_a = self._single
        n = self._n
        self._type_ids = head[1] + [type_a] * n + tail[1]
        self._attention_mask = [1] * (len(head[0]) + n + len(tail[0]))
        self._special_tokens_mask = head[2] + [0] * n + tail[2]

    type_ids = _Derived()
    attention_mask = _Derived()
    special_tokens_mask = _Derived()

    @property
    def parts(self) -> tuple:
        if self._parts is None:
            head, tail, _ = self._single
            self._parts = head[3] + (("A", range(self._n)),) + tail[3]
        return self._parts

    @property
    def texts(self) -> tuple:
        t = self._texts
        return t if type(t) is tuple else (t,)

    @texts.setter
    def texts(self, v) -> None:
        self._texts = v

    @property
    def tokens(self) -> list[str]:
        """Each token's text as the reference's ``Encoding.tokens`` has it: the vocabulary string,
        except where the reference shows the text a token covers (an added token matched in the
        text, its stripped spaces included; Unigram's unknown token), which comes from the aligned
        path that `offsets` uses."""
        tok = self.tokenizer
        if self.texts and tok._text_valued and not tok._text_valued.isdisjoint(self.ids):
            if self._tokens is None:
                self._offsets, self._tokens = tok._aligned(self)
            out = list(self._tokens)
        else:
            out = [tok.id_to_token(i) or "" for i in self.ids]
        if self.pad_left or self.pad_right:  # padding shows the padding's pad_token, as the reference's does
            out[:self.pad_left] = [self.pad_token] * self.pad_left
            out[len(out) - self.pad_right:] = [self.pad_token] * self.pad_right
        return out

    @property
    def layout(self) -> list:
        """Where each token came from: ``("A" | "B", index before the template)``, or None for a
        template or padding token. Derived on use, so encoding pays nothing for it."""
        out = [None] * self.pad_left
        for kind, n in self.parts:
            out += [None] * n if kind == "S" else [(kind, k) for k in n]
        return out + [None] * self.pad_right

    @property
    def offsets(self) -> list[tuple[int, int]]:
        if self._offsets is None:
            self._offsets, self._tokens = self.tokenizer._aligned(self)
        return self._offsets

    def __len__(self) -> int:
        return len(self.ids)


#: normaliser instructions that map each character on its own, whatever surrounds it
PER_CHAR_NORMALIZERS = frozenset({"NORM.NFC", "NORM.NFD", "NORM.NFKC", "NORM.NFKD", "NORM.LOWER", "NORM.DROP",
                                  "NORM.MAP_SPACE", "NORM.PAD"})
#: normaliser instructions whose step is a function of each character alone, so that a run of them is
#: one ``str.translate`` (Unicode normal forms are not: composition and canonical ordering look at neighbours)
TRANSLATABLE_NORMALIZERS = frozenset({"NORM.LOWER", "NORM.DROP", "NORM.MAP_SPACE", "NORM.PAD"})
#: `Encoding`'s ``single`` for text without a template: no specials around ``$A``, whose type is 0
_BARE = (([], [], [], ()), ([], [], [], ()), 0)
#: the ``first`` flag array of one segment that does (or, after a left strip, does not) start its text
_FIRST, _NOT_FIRST = np.ones(1, np.bool_), np.zeros(1, np.bool_)

#: PRE.SPLIT's ``kind`` operand -> the split kernel's mode
SPLIT_KINDS = {"class": K.SPLIT_CLASS, "literal": K.SPLIT_LITERAL, "gpt2": K.SPLIT_GPT2, "words": K.SPLIT_WORDS}


class Tokenizer:
    """A loaded TISA program, ready to encode and decode.

    Raises (from its methods):
        NacInputError: text that is not a ``str`` (or is invalid UTF-8 bytes, or holds lone
            surrogates); a truncation that cannot be met (``max_length`` below the template's
            special tokens, ``only_first``/``only_second`` with too short a text).
        NacError: the program needs an unknown token it does not have.
    """

    #: words each thread's word cache holds (a power of two; 0 turns the cache off)
    WORD_CACHE_SLOTS = K.CACHE_SLOTS
    #: code points of a batch per engine thread below which `encode_batch` runs on the calling
    #: thread alone (about 0.3 ms of work; a hand-off to the engine's team costs a few us)
    PARALLEL_MIN_CHARS = 8192

    def __init__(self, program: Program):
        self.program = program
        self._where = f"tokenizer {program.source or '(unnamed)'}"
        t = program.tables
        self._cls = (t["class_index"], t["class_blocks"])
        self._vocab, self._vocab_off = t["vocab"], t["vocab_off"]
        self._missing = set(t["vocab_missing"].tolist())
        self._added = {a["id"]: a for a in program.added}
        self._special_ids = {a["id"] for a in program.added if a["special"]}
        self._token_cache: dict[int, str] = {}
        self._vocab_map: dict[str, int] | None = None
        self._norm, self._pre_str, self._model, self._template, self._dec = [], [], None, None, []
        #: ids whose reference ``Encoding.tokens`` entry is the text they cover (added tokens, Unigram's unk)
        self._text_valued = {a["id"] for a in program.added}
        self._single = None  # the single-text template as (head, tail, type of $A) when it is specials, $A, specials
        #: the array pre-tokeniser steps, as data: (op, split kind, class mask, behaviour, invert,
        #: literal code points, rewrite operands a, b); `kernels.pre_tokenize` runs them in one call
        self._pre_steps: list[tuple] = []
        self._fused = None  # (cps, lens, first) -> (ids, tokens per segment): pre-tokeniser and model in one call
        self._trim: bool | None = None  # POST.TRIM_OFFSETS: None, or its add_prefix_space
        self._aligner = None  # the offsets path's steps (nac.tokenizer_vm.offsets), built on first use
        self._threads = threading.local()  # each thread's word cache (`_word_cache`)
        for ins in program.code:
            self._load(ins)
        self._pre = self._pre_arrays()
        self._ascii_norm = self._ascii_normalizer()
        self._norm_runs = self._translated_runs()
        # what decode shows for an added token: its normalised form if it is matched normalised
        self._added_text = {a["id"]: self._normalize(a["content"])[0] if a["normalized"] and self._norm
                            else a["content"] for a in program.added}
        self._added_re = self._added_matcher(normalized=False)
        self._added_norm_re = self._added_matcher(normalized=True)
        self.truncation = dict(program.truncation) if program.truncation else None
        self.padding = dict(program.padding) if program.padding else None

    def _word_cache(self) -> np.ndarray:
        """This thread's `kernels.word_cache` (`WORD_CACHE_SLOTS` words, 1.1 MB), made on its first
        encode: the kernels write to it, so no two threads share one."""
        cache = getattr(self._threads, "cache", None)
        if cache is None:
            cache = self._threads.cache = K.word_cache(self.WORD_CACHE_SLOTS)
        return cache

    # -- configuration (the Hugging Face names) ----------------------------------------------------
    def enable_truncation(self, max_length: int, stride: int = 0, strategy: str = "longest_first",
                          direction: str = "right") -> None:
        """Truncate every encoding to ``max_length`` tokens, template tokens included (Hugging Face
        ``truncate_encodings``). ``stride`` is recorded but overflowing windows are not produced.

        Raises:
            NacInputError: ``max_length`` or ``stride`` not an integer in [0, `MAX_LENGTH`], an unknown
                ``strategy`` (longest_first, only_first, only_second) or ``direction`` (left, right).
        """
        max_length = _count(max_length, "max_length", 0)
        stride = _count(stride, "stride", 0)
        strategy = _choice(strategy, "strategy", ("longest_first", "only_first", "only_second"))
        direction = _choice(direction, "direction", ("left", "right"))
        self.truncation = {"max_length": max_length, "stride": stride, "direction": direction.capitalize(),
                           "strategy": "".join(w.capitalize() for w in strategy.split("_"))}

    def no_truncation(self) -> None:
        self.truncation = None

    def enable_padding(self, direction: str = "right", pad_id: int | None = None, pad_type_id: int = 0,
                       pad_token: str | None = None, length: int | None = None,
                       pad_to_multiple_of: int | None = None) -> None:
        """Pad a batch to its longest encoding (or to ``length``); the pad token defaults to the
        file's padding token, else ``[PAD]``/``<pad>`` if the vocabulary has one, else id 0.

        Raises:
            NacInputError: ``pad_id`` not an id of this vocabulary, ``length`` not in [0, `MAX_LENGTH`],
                ``pad_to_multiple_of`` below 1, a negative ``pad_type_id``, an unknown ``direction``.
        """
        direction = _choice(direction, "direction", ("left", "right"))
        if length is not None:
            length = _count(length, "length", 0)
        if pad_to_multiple_of is not None:
            pad_to_multiple_of = _count(pad_to_multiple_of, "pad_to_multiple_of", 1)
        pad_type_id = _count(pad_type_id, "pad_type_id", 0)
        if pad_token is not None and not isinstance(pad_token, str):
            raise NacInputError(f"pad_token must be a string, not {type(pad_token).__name__}")
        if pad_id is not None:
            pad_id = _count(pad_id, "pad_id", 0, self.get_vocab_size() - 1)
        else:
            base = self.program.padding or {}
            pad_token = pad_token or base.get("pad_token")
            for cand in ([pad_token] if pad_token else []) + ["[PAD]", "<pad>"]:
                if self.token_to_id(cand) is not None:
                    pad_token, pad_id = cand, self.token_to_id(cand)
                    break
            else:
                pad_id = int(base.get("pad_id", 0))
        self.padding = {"length": length, "direction": direction.capitalize(), "pad_id": int(pad_id),
                        "pad_type_id": pad_type_id, "pad_token": pad_token or "[PAD]",  # the reference's default
                        "pad_to_multiple_of": pad_to_multiple_of}

    def no_padding(self) -> None:
        self.padding = None

    # -- vocabulary -------------------------------------------------------------------------------
    def get_vocab_size(self) -> int:
        """Number of ids (model vocabulary and added tokens)."""
        return self._vocab_off.size - 1

    def id_to_token(self, i: int) -> str | None:
        """The vocabulary string of id ``i``, or None if no token has that id.

        Raises:
            NacInputError: ``i`` is not an integer.
        """
        v, i = i, _integer(i)
        if i is None:
            raise NacInputError(f"token id must be an integer, not {v!r}")
        if i < 0 or i >= self._vocab_off.size - 1 or i in self._missing:
            return None
        s = self._token_cache.get(i)
        if s is None:
            s = self._vocab[self._vocab_off[i]:self._vocab_off[i + 1]].astype(np.uint32).tobytes().decode("utf-32-le")
            self._token_cache[i] = s
        return s

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary string or added token, or None."""
        if self._vocab_map is None:
            self._vocab_map = {self.id_to_token(i): i for i in range(self.get_vocab_size()) if i not in self._missing}
            for a in self.program.added:
                self._vocab_map[a["content"]] = a["id"]
        return self._vocab_map.get(token)

    # -- encoding -------------------------------------------------------------------------------------
    def encode(self, text, pair=None, add_special_tokens: bool = True) -> Encoding:
        """Encode one text (or a pair): ``Encoding(ids, type_ids, attention_mask, …)``.

        Raises:
            NacInputError: as `encode_batch`.
        """
        if pair is None and type(text) is str and not self.padding:
            # one text, the common per-line call: `encode_batch`'s steps without its lists
            enc = self._post(self._encode_one(_text(text, 0)), None, add_special_tokens)
            enc._texts = text
            return enc
        return self.encode_batch([text if pair is None else (text, pair)], add_special_tokens)[0]

    def _encode_one(self, text: str) -> list[int]:
        """`_encode_texts` of one text; the same ids, with less per-call work where the text holds no
        added token (one regular-expression search instead of the split)."""
        if self._fused is None or self._pre_str or (self._added_re and self._added_re[0].search(text)):
            return self._encode_texts([text])[0]
        norm, lost_left = self._normalize(text)
        if self._added_norm_re and self._added_norm_re[0].search(norm):
            return self._encode_texts([text])[0]
        if not norm:
            return []
        ids, _ = self._fused(_code_points(norm), np.array([len(norm)], np.int64), _NOT_FIRST if lost_left else _FIRST)
        return ids.tolist()

    def encode_batch(self, inputs: list, add_special_tokens: bool = True) -> list[Encoding]:
        """Encode a list of texts or ``(text, pair)`` tuples; pads them together if padding is on.

        Raises:
            NacInputError: ``inputs`` is not a list or tuple, an item is not text (see the class).
        """
        if not isinstance(inputs, (list, tuple)):
            raise NacInputError(f"encode_batch needs a list of texts, not {type(inputs).__name__}")
        firsts, seconds = [], []
        for i, item in enumerate(inputs):
            if isinstance(item, (tuple, list)) and len(item) == 2:
                firsts.append(_text(item[0], i))
                seconds.append(_text(item[1], i))
            else:
                firsts.append(_text(item, i))
                seconds.append(None)
        texts = firsts + [s for s in seconds if s is not None]
        ids = self._encode_texts(texts)
        out, k = [], len(firsts)
        for i in range(len(firsts)):
            a = ids[i]
            b = None
            if seconds[i] is not None:
                b = ids[k]
                k += 1
            out.append(self._post(a, b, add_special_tokens))
            out[-1]._texts = firsts[i] if seconds[i] is None else (firsts[i], seconds[i])
        if self.padding:
            self._pad(out)
        return out

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text before the template: model and added-token ids."""
        segments: list[str] = []
        seg_first: list[bool] = []
        plans: list[list] = []
        for text in texts:
            plan = []
            for piece, tok, orig0 in self._split_added(text):
                if tok is not None:
                    plan.append(-1 - tok)
                else:
                    plan.append(len(segments))
                    segments.append(piece)
                    seg_first.append(orig0)
            plans.append(plan)
        seg_ids = self._segments(segments, seg_first)
        return [[x for p in plan for x in (seg_ids[p] if p >= 0 else (-1 - p,))] for plan in plans]

    def _split_added(self, text: str):
        """Yield ``(piece, added_id_or_None, starts_at_offset_0)``; pieces are normalised."""
        raw = _find_added(text, self._added_re, self._added) if self._added_re else [(0, len(text), None)]
        for s, e, tok in raw:
            if tok is not None:
                yield text[s:e], tok, s == 0
                continue
            piece = text[s:e]
            if not piece:
                continue
            norm, lost_left = self._normalize(piece)
            orig0 = s == 0 and not lost_left
            if self._added_norm_re:
                for s2, e2, tok2 in _find_added(norm, self._added_norm_re, self._added):
                    if e2 > s2:
                        yield norm[s2:e2], tok2, orig0 and s2 == 0
            elif norm:
                yield norm, None, orig0

    def _normalize(self, s: str) -> tuple[str, bool]:
        """The normaliser steps on ``s``: (normalised text, whether a step removed text at its left)."""
        if self._ascii_norm is not None and s.isascii():
            lowers, specials, table = self._ascii_norm
            if specials is None or not specials.search(s):
                return (s.lower() if lowers else s), False
            return s.translate(table), False
        lost_left = False
        for fn in self._norm_runs:
            s, lost = fn(s)
            lost_left |= lost
        return s, lost_left

    def _normalize_steps(self, s: str) -> tuple[str, bool]:
        """The normaliser steps one by one: the reference that `_normalize`'s tables are built from."""
        lost_left = False
        for fn in self._norm:
            s, lost = fn(s)
            lost_left |= lost
        return s, lost_left

    def _translated_runs(self) -> list:
        """`_norm` with each run of two or more consecutive steps that map every character on its own
        (`TRANSLATABLE_NORMALIZERS`) replaced by one ``str.translate`` through a `_CharMap` of their
        combined effect: one pass over the text instead of one regular expression per step (BERT's
        six steps become translate, NFD, translate)."""
        norm = [i for i in self.program.code if i["op"].startswith("NORM.")]
        if len(norm) != len(self._norm):  # every NORM op adds one step; anything else keeps the plain list
            return list(self._norm)
        out, run = [], []
        for ins, fn in [*zip(norm, self._norm), (None, None)]:
            if ins is not None and _each_char(ins, TRANSLATABLE_NORMALIZERS):
                run.append(fn)
                continue
            if len(run) > 1:
                table = _CharMap(run)
                out.append(lambda s, table=table: (s.translate(table), False))
            else:
                out += run
            run = []
            if fn is not None:
                out.append(fn)
        return out

    def _ascii_normalizer(self):
        """For a normaliser whose every step maps each character on its own (`PER_CHAR_NORMALIZERS`),
        its effect on ASCII text as data: ``(lowers, specials, table)``. ``table`` (for
        ``str.translate``) is the steps run on each ASCII character; ``lowers`` whether the steps
        lowercase; ``specials`` matches the characters the table maps to something other than
        ``str.lower`` (if ``lowers``) or themselves (None if there is none), so text without them is
        just ``s.lower()`` or ``s``. None when a step is not per character (strip, prepend, a
        multi-character replacement, SentencePiece's charsmap)."""
        norm = [i for i in self.program.code if i["op"].startswith("NORM.")]
        if not norm or not all(_each_char(i, PER_CHAR_NORMALIZERS) for i in norm):
            return None
        lowers = any(i["op"] == "NORM.LOWER" for i in norm)
        table, specials = {}, []
        for c in range(128):
            out, lost = self._normalize_steps(chr(c))
            if lost:
                return None
            table[c] = out
            if out != (chr(c).lower() if lowers else chr(c)):
                specials.append(c)
        pattern = re.compile("[" + "".join(_re_range(c, c) for c in specials) + "]") if specials else None
        return lowers, pattern, table

    def _pre_arrays(self) -> tuple:
        """The array pre-tokeniser steps as `kernels.pre_tokenize`'s arrays: ``(steps, lit, index, blocks)``."""
        rows, lits, at = [], [], 0
        for op, kind, mask, beh, inv, lit, a, b in self._pre_steps:
            rows.append((op, kind, mask, beh, int(inv), at, at + len(lit), a, b))
            lits.append(lit)
            at += len(lit)
        steps = np.array(rows, np.int64).reshape(-1, K.STEP_COLUMNS)
        lit = np.concatenate(lits).astype(np.int32) if lits else np.empty(0, np.int32)
        return steps, lit, *self._cls

    def _parts_of(self, lens: np.ndarray) -> list[int]:
        """Segment bounds splitting a batch into one part per engine thread (`nac.engine.threads`),
        of about equal code points, when it holds at least `PARALLEL_MIN_CHARS` per part; else
        ``[0, len(lens)]``."""
        total = int(lens.sum())
        if total < 2 * self.PARALLEL_MIN_CHARS:  # first: `num_threads` reads the environment and the affinity
            return [0, lens.size]
        n = min(num_threads(), lens.size, total // self.PARALLEL_MIN_CHARS)
        if n <= 1:
            return [0, lens.size]
        ends = np.cumsum(lens)
        cuts = np.searchsorted(ends, [total * k // n for k in range(1, n)], side="right").tolist()
        return sorted({0, lens.size, *cuts})

    def _segments(self, segments: list[str], first: list[bool]) -> list[list[int]]:
        """Pre-tokenise and run the model over all segments at once; token ids per segment."""
        if not segments:
            return []
        if self._fused is not None and not self._pre_str:  # one compiled call per thread for the whole batch
            lens = np.fromiter(map(len, segments), np.int64, len(segments))
            first = np.array(first, np.bool_)
            parts = self._parts_of(lens)
            results = [None] * (len(parts) - 1)

            def run(lo: int, hi: int) -> None:  # parts lo..hi, each one compiled call (GIL released)
                for p in range(lo, hi):
                    a, b = parts[p], parts[p + 1]
                    results[p] = self._fused(_code_points("".join(segments[a:b])), lens[a:b], first[a:b])
            split_range(run, len(results))
            out = []
            for ids, per_seg in results:
                flat, off = ids.tolist(), 0
                for n in per_seg.tolist():
                    out.append(flat[off:off + n])
                    off += n
            return out
        words, wseg, wfirst = segments, list(range(len(segments))), first
        for fn in self._pre_str:
            words, wseg, wfirst = fn(words, wseg, wfirst)
        lens = np.fromiter(map(len, words), np.int64, len(words))
        ends = np.cumsum(lens)
        starts = ends - lens
        cps = np.frombuffer("".join(words).encode("utf-32-le", "surrogatepass"), np.uint32).view(np.int32)
        keep = lens > 0
        starts, ends = starts[keep], ends[keep]
        wseg = np.asarray(wseg, np.int64)[keep]
        wfirst = np.asarray(wfirst, np.bool_)[keep]
        for op, kind, mask, beh, inv, lit, a, b in self._pre_steps:  # step by step (what pre_tokenize does)
            if op == K.PRE_SPLIT:
                starts, ends, wfirst, src = K.split_words(cps, starts, ends, wfirst, kind, *self._cls, mask, lit, beh, inv)
                wseg = wseg[src]
            else:
                cps, starts, ends = K.rewrite_words(cps, starts, ends, wfirst, op, a, b)
        ids, counts = self._model(cps, starts, ends)
        per_seg = np.bincount(wseg, weights=counts, minlength=len(segments)).astype(np.int64)
        off = np.concatenate([[0], np.cumsum(per_seg)]).tolist()
        flat = ids.tolist()
        return [flat[off[i]:off[i + 1]] for i in range(len(segments))]

    def template(self, a: list[int], b: list[int] | None = None) -> Encoding:
        """The special-token template around already tokenised ids ``a`` (and ``b``), without
        truncation or padding (``tokenizers``' ``post_process``). Its ``layout`` says where each
        token came from; it has no text, so no ``offsets``.

        Raises:
            NacInputError: an id outside the vocabulary.
        """
        a, b = self._checked_ids(a), None if b is None else self._checked_ids(b)
        return self._post(a, b, True, truncate=False)

    def _post(self, a: list[int], b: list[int] | None, add_special: bool, truncate: bool = True) -> Encoding:
        """Truncation, then the template. As in the reference, only template (and padding) tokens
        are marked special, not added tokens matched in the text."""
        tpl = self._template if add_special else None
        if b is None and not (self.truncation and truncate) and (tpl is None or self._single is not None):
            # one text, no template or the usual one (specials, $A, specials): the rest is derived on read
            if tpl is None:
                return Encoding(a, tokenizer=self, single=_BARE, n=len(a))
            head, tail, _ = self._single
            return Encoding(head[0] + a + tail[0], tokenizer=self, single=self._single, n=len(a))
        # truncation keeps a contiguous range of each text's tokens; the ranges record which (offsets)
        ia, ib = range(len(a)), None if b is None else range(len(b))
        if self.truncation and truncate:
            n_added = 0
            if tpl:
                n_added = sum(len(x[1]) for x in (tpl["pair"] if b is not None else tpl["single"]) if x[0] == "S")
            ia, ib = _truncate(ia, ib, self.truncation, n_added)
            a, b = a[ia.start:ia.stop], None if b is None else b[ib.start:ib.stop]
        if tpl is None:
            ids = a + (b or [])
            types = [0] * len(a) + [1] * len(b or [])
            smask = [0] * len(ids)
            parts = (("A", ia),) if b is None else (("A", ia), ("B", ib))
        else:
            ids, types, smask, parts = [], [], [], []
            for item in tpl["pair"] if b is not None else tpl["single"]:
                seq = item[1] if item[0] == "S" else a if item[0] == "A" else b
                ids += seq
                types += [item[-1]] * len(seq)
                smask += [int(item[0] == "S")] * len(seq)
                parts.append(("S", len(seq)) if item[0] == "S" else (item[0], ia if item[0] == "A" else ib))
        return Encoding(ids, types, [1] * len(ids), smask, self, tuple(parts))

    def _aligned(self, enc: Encoding) -> tuple[list[tuple[int, int]], list[str]]:
        """Character spans and token texts for ``enc`` (see `Encoding.offsets`, `Encoding.tokens`),
        from the aligned slow path."""
        from nac.tokenizer_vm.offsets import text_offsets, trim_offsets

        per_text, texts, layout = {}, {}, enc.layout
        for key, text in zip("AB", enc.texts):
            ids, spans, values, _ = text_offsets(self, text)
            kept = [item[1] for item in layout if item and item[0] == key]
            fast = [i for i, item in zip(enc.ids, layout) if item and item[0] == key]
            if any(k >= len(ids) for k in kept) or [ids[k] for k in kept] != fast:
                raise NacError(f"{self._where}: offsets: the aligned path gives other ids than encode for {text[:60]!r}")
            if self._trim is not None:  # per text, after truncation, as the reference's post-processor
                spans = dict(zip(kept, trim_offsets([values[k] for k in kept], [spans[k] for k in kept], self._trim)))
            per_text[key], texts[key] = spans, values
        offsets = [(0, 0) if item is None else tuple(per_text[item[0]][item[1]]) for item in layout]
        tokens = [(self.id_to_token(i) or "") if item is None else texts[item[0]][item[1]] for i, item in zip(enc.ids, layout)]
        return offsets, tokens

    def _pad(self, encs: list[Encoding]) -> None:
        p = self.padding
        target = p["length"] if p.get("length") else max((len(e) for e in encs), default=0)
        m = p.get("pad_to_multiple_of")
        if m and target % m:
            target += m - target % m
        for e in encs:
            n = target - len(e)
            if n <= 0:
                continue
            pad = ([p["pad_id"]] * n, [p["pad_type_id"]] * n, [0] * n, [1] * n)
            e.pad_token = p["pad_token"]
            if p["direction"] == "Left":
                e.ids, e.type_ids, e.attention_mask, e.special_tokens_mask = (
                    pad[0] + e.ids, pad[1] + e.type_ids, pad[2] + e.attention_mask, pad[3] + e.special_tokens_mask)
                e.pad_left += n
            else:
                e.ids += pad[0]
                e.type_ids += pad[1]
                e.attention_mask += pad[2]
                e.special_tokens_mask += pad[3]
                e.pad_right += n

    # -- decoding ------------------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of token ids (a list of ints or a 1-D integer array). Ids inside the
        vocabulary that no token has (holes in a sparse vocabulary) are skipped, as the reference does.

        Raises:
            NacInputError: ``ids`` is not a sequence of integers, or holds an id outside
                [0, vocabulary size).
        """
        tokens = []
        for i in self._checked_ids(ids):
            if skip_special_tokens and i in self._special_ids:
                continue
            t = self._added_text.get(i)
            if t is None:
                t = self.id_to_token(i)
            if t is not None:
                tokens.append(t)
        return self.decode_tokens(tokens)

    def decode_tokens(self, tokens: list[str]) -> str:
        """The decoder over token strings (``tokenizers``' ``decoder.decode``, which transformers'
        ``convert_tokens_to_string`` calls): tokens joined by spaces when the program has no decoder.

        Raises:
            NacInputError: ``tokens`` is not a list of strings.
        """
        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
            raise NacInputError("decode_tokens needs a list of token strings")
        tokens = list(tokens)
        if not self._dec:
            return " ".join(tokens)
        for fn in self._dec:
            tokens = fn(tokens)
        return "".join(tokens)

    def decode_batch(self, batch, skip_special_tokens: bool = True) -> list[str]:
        """:meth:`decode` for each sequence. Raises NacInputError as `decode` does."""
        if isinstance(batch, (str, bytes)) or not hasattr(batch, "__iter__"):
            raise NacInputError(f"decode_batch needs a list of id sequences, not {type(batch).__name__}")
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def _checked_ids(self, ids) -> list[int]:
        """``ids`` as a list of Python ints in [0, vocabulary size); NacInputError otherwise."""
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise NacInputError(f"ids must be a 1-D integer array, not {ids.dtype}{list(ids.shape)}")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple, range)):
            raise NacInputError(f"ids must be a list of integers, not {type(ids).__name__}")
        n = self.get_vocab_size()
        out = []
        for k, v in enumerate(ids):
            i = _integer(v)
            if i is None:
                raise NacInputError(f"ids[{k}] = {v!r} is not an integer token id")
            if not 0 <= i < n:
                raise NacInputError(f"ids[{k}] = {i} is outside the vocabulary [0, {n})")
            out.append(i)
        return out

    # -- instruction loading -------------------------------------------------------------------------
    def _load(self, ins: dict) -> None:
        op = ins["op"]
        stage, name = op.split(".", 1)
        getattr(self, f"_op_{stage.lower()}_{name.lower()}")(ins)

    def _op_added_split(self, ins):
        pass

    def _class_regex(self, ins: dict, template: str):
        """``(ascii_regex_or_None, lazy_full_regex)`` for a class step: ASCII text needs only the
        class's ASCII members; the full class is compiled on the first non-ASCII text."""
        ranges = self.program.tables[ins["ranges_table"]].reshape(-1, 2).tolist()
        ascii_ranges = [(a, min(b, 127)) for a, b in ranges if a < 128]
        small = re.compile(template % ("[" + "".join(_re_range(a, b) for a, b in ascii_ranges) + "]")) \
            if ascii_ranges else None
        full = _Lazy(lambda: re.compile(template % (
            "[" + "".join(_re_range(a, b) for a, b in ranges if not (0xD800 <= a and b <= 0xDFFF)) + "]")))
        return small, full

    def _class_step(self, ins: dict, template: str, repl: str) -> None:
        small, full = self._class_regex(ins, template)

        def run(s):
            if s.isascii():
                return (small.sub(repl, s) if small else s), False
            return full().sub(repl, s), False
        self._norm.append(run)

    def _nf(self, form: str, ins: dict) -> None:
        table = self.program.tables[ins["assigned_table"]]
        lazy = _Lazy(lambda: re.compile("([^" + "".join(_re_range(a, b) for a, b in table.reshape(-1, 2).tolist()) + "])"))

        def run(s):
            if s.isascii():
                return s, False
            unknown = lazy()
            if not unknown.search(s):
                return unicodedata.normalize(form, s), False
            # characters newer than the reference's tables are starters it leaves alone
            parts = unknown.split(s)
            return "".join(p if i % 2 else unicodedata.normalize(form, p) for i, p in enumerate(parts)), False
        self._norm.append(run)

    def _op_norm_nfc(self, ins):
        self._nf("NFC", ins)

    def _op_norm_nfd(self, ins):
        self._nf("NFD", ins)

    def _op_norm_nfkc(self, ins):
        self._nf("NFKC", ins)

    def _op_norm_nfkd(self, ins):
        self._nf("NFKD", ins)

    def _op_norm_lower(self, ins):
        t = self.program.tables
        src, off, dst = t["lower_src"], t["lower_off"], t["lower_dst"]
        table = _Lazy(lambda: {c: "".join(map(chr, dst[off[i]:off[i + 1]].tolist())) for i, c in enumerate(src.tolist())})
        self._norm.append(lambda s: (s.lower() if s.isascii() else s.translate(table()), False))

    def _op_norm_drop(self, ins):
        self._class_step(ins, "%s+", "")

    def _op_norm_map_space(self, ins):
        self._class_step(ins, "%s", " ")

    def _op_norm_pad(self, ins):
        self._class_step(ins, "(%s)", r" \1 ")

    def _op_norm_replace(self, ins):
        content = ins["content"]
        if ins["kind"] == "string":
            pattern = ins["pattern"]
            self._norm.append(lambda s: (s.replace(pattern, content) if pattern else s, False))
        else:
            pat = _Regex(ins["pattern"], self._where)
            self._norm.append(lambda s: (pat.sub(content, s), False))

    def _op_norm_strip(self, ins):
        ws = "".join(_WS)
        left, right = ins["left"], ins["right"]

        def strip(s):
            t = s.lstrip(ws) if left else s
            lost = len(t) != len(s)
            return (t.rstrip(ws) if right else t), lost
        self._norm.append(strip)

    def _op_norm_precompiled(self, ins):
        from nac.tokenizer_vm.precompiled import charsmap_of

        charsmap = _Lazy(lambda: charsmap_of(self.program.tables, ins["map"]))
        self._norm.append(lambda s: (charsmap().normalize(s), False))

    def _op_norm_prepend(self, ins):
        text = ins["text"]
        self._norm.append(lambda s: (text + s if s else s, False))

    def _op_pre_regex(self, ins):
        pat = _Regex(ins["pattern"], self._where)
        behaviour, invert = K.BEHAVIOURS[ins["behaviour"]], ins["invert"]

        def run(words, wseg, wfirst):
            out_w, out_s, out_f = [], [], []
            for w, sg, f in zip(words, wseg, wfirst):
                for a, b in _split_by_matches(w, pat.spans(w), behaviour, invert):
                    out_w.append(w[a:b])
                    out_s.append(sg)
                    out_f.append(f and a == 0)
            return out_w, out_s, out_f
        self._pre_str.append(run)

    def _op_pre_split(self, ins):
        kind = SPLIT_KINDS[ins["kind"]]
        lit = np.array([ord(c) for c in ins.get("literal", "")], np.int32)
        mask, beh, inv = int(ins.get("classes", 0)), K.BEHAVIOURS[ins["behaviour"]], bool(ins.get("invert", False))
        self._pre_steps.append((K.PRE_SPLIT, kind, mask, beh, inv, lit, 0, 0))

    def _rewrite(self, op, a=0, b=0):
        self._pre_steps.append((op, 0, 0, 0, False, np.empty(0, np.int32), a, b))

    def _op_pre_prefix_space(self, ins):
        self._rewrite(K.REWRITE_PREFIX_SPACE)

    def _op_pre_metaspace(self, ins):
        self._rewrite(K.REWRITE_METASPACE, ord(ins["replacement"]), {"never": 0, "always": 1, "first": 2}[ins["prepend"]])

    def _op_pre_utf8(self, ins):
        self._rewrite(K.REWRITE_UTF8)

    def _key_tables(self, ins):
        t = self.program.tables
        return t["keys"], t["keys_off"], t["keys_id"], t["keys_hash"]

    def _op_model_wordpiece(self, ins):
        keys = self._key_tables(ins)
        prefix = np.array(ins["prefix"], np.int32)
        unk, max_chars = int(ins["unk"]), int(ins["max_chars"])
        longest = int(np.diff(keys[1]).max()) if keys[1].size > 1 else 0  # the longest key, in code points
        self._model = lambda cps, s, e: K.wordpiece(cps, s, e, *keys, prefix, max_chars, unk, longest)
        tail = (*keys, prefix, max_chars, unk, longest)
        self._fused = lambda cps, lens, first: K.encode_wordpiece(cps, lens, first, *self._pre, *tail)

    def _op_model_wordlevel(self, ins):
        keys = self._key_tables(ins)
        unk, none = int(ins["unk"]), np.empty(0, np.int32)

        def run(cps, s, e):
            ids = np.array([K.lookup(*keys, none, cps, a, b, none) for a, b in zip(s.tolist(), e.tolist())], np.int32)
            return np.where(ids < 0, unk, ids).astype(np.int32), np.ones(s.size, np.int64)
        self._model = run

    def _op_model_bpe(self, ins):
        t = self.program.tables
        keys = self._key_tables(ins)
        merges = (t["merge_keys"], t["merge_rank"], t["merge_new"])
        args = (np.array(ins["prefix"], np.int32), np.array(ins["suffix"], np.int32), t["byte_ids"],
                bool(ins["byte_fallback"]), int(ins["unk"]), bool(ins["fuse_unk"]), bool(ins["ignore_merges"]),
                any(i["op"] == "PRE.UTF8" for i in self.program.code))

        def run(cps, s, e):
            ids, counts, _ = K.bpe(cps, s, e, *keys, *merges, *args, self._word_cache())
            return ids, counts
        self._model = run
        tail = (*keys, *merges, *args)

        def fused(cps, lens, first):
            ids, per_seg, _ = K.encode_bpe(cps, lens, first, *self._pre, self._word_cache(), *tail)
            return ids, per_seg
        self._fused = fused

    def _op_model_unigram(self, ins):
        t = self.program.tables
        keys = self._key_tables(ins)
        args = (t["scores"], int(ins["max_len"]), int(ins["unk"]), float(ins["unk_score"]), True, t["byte_ids"],
                bool(ins["byte_fallback"]))

        self._text_valued.add(int(ins["unk"]))

        def checked(ids, counts, err):
            if err:
                raise NacError(f"{self.program.source}: text needs an unknown token but the Unigram model has no unk_id")
            return ids, counts
        self._model = lambda cps, s, e: checked(*K.unigram(cps, s, e, *keys, *args))
        tail = (*keys, *args)
        self._fused = lambda cps, lens, first: checked(*K.encode_unigram(cps, lens, first, *self._pre, *tail))

    def _op_post_trim_offsets(self, ins):
        self._trim = bool(ins["prefix_space"])

    def _op_post_template(self, ins):
        self._template = {"single": ins["single"], "pair": ins["pair"]}
        items = ins["single"]
        where = [k for k, item in enumerate(items) if item[0] != "S"]
        if len(where) == 1 and items[where[0]][0] == "A":  # specials, $A, specials: `_post`'s fast case
            def side(part):
                ids = [i for item in part for i in item[1]]
                return (ids, [item[-1] for item in part for _ in item[1]], [1] * len(ids),
                        tuple(("S", len(item[1])) for item in part))
            self._single = side(items[:where[0]]), side(items[where[0] + 1:]), items[where[0]][-1]

    def _op_dec_wordpiece(self, ins):
        prefix, cleanup = ins["prefix"], ins["cleanup"]

        def run(tokens):
            out = []
            for i, t in enumerate(tokens):
                if i:
                    t = t[len(prefix):] if t.startswith(prefix) else " " + t
                out.append(_cleanup(t) if cleanup else t)
            return out
        self._dec.append(run)

    def _op_dec_bytelevel(self, ins):
        table = {c: b for b, c in bytes_to_unicode().items()}

        def run(tokens):
            """A token made only of byte characters gives those bytes; any other token (an added
            token, or text decoded already) its own UTF-8, as the reference's ByteLevel decoder."""
            buf = bytearray()
            for t in tokens:
                bs = [table.get(ch) for ch in t]
                if None in bs:
                    buf += t.encode("utf-8", "surrogatepass")
                else:
                    buf += bytes(bs)
            return [buf.decode("utf-8", "replace")]
        self._dec.append(run)

    def _op_dec_metaspace(self, ins):
        rep, drop_first = ins["replacement"], ins["prepend"] != "never"

        def run(tokens):
            return [t.replace(rep, "" if i == 0 and drop_first else " ") for i, t in enumerate(tokens)]
        self._dec.append(run)

    def _op_dec_byte_fallback(self, ins):
        def flush(buf, out):
            if buf:
                try:
                    out.append(bytes(buf).decode("utf-8"))
                except UnicodeDecodeError:
                    out.extend(["\ufffd"] * len(buf))
                buf.clear()

        def run(tokens):
            out, buf = [], []
            for t in tokens:
                if len(t) == 6 and t.startswith("<0x") and t.endswith(">") and _is_hex2(t[3:5]):
                    buf.append(int(t[3:5], 16))
                else:
                    flush(buf, out)
                    out.append(t)
            flush(buf, out)
            return out
        self._dec.append(run)

    def _op_dec_fuse(self, ins):
        self._dec.append(lambda tokens: ["".join(tokens)])

    def _op_dec_strip(self, ins):
        c, start, stop = ins["content"], ins["start"], ins["stop"]

        def one(t):
            a = 0
            while a < min(start, len(t)) and t[a] == c:
                a += 1
            b = len(t)
            for _ in range(stop):
                if b > a and t[b - 1] == c:
                    b -= 1
                else:
                    break
            return t[a:b]
        self._dec.append(lambda tokens: [one(t) for t in tokens])

    def _op_dec_replace(self, ins):
        content = ins["content"]
        if ins["kind"] == "string":
            p = ins["pattern"]
            self._dec.append(lambda tokens: [t.replace(p, content) for t in tokens])
        else:
            pat = _Regex(ins["pattern"], self._where)
            self._dec.append(lambda tokens: [pat.sub(content, t) for t in tokens])

    def _op_dec_bpe(self, ins):
        suffix = ins["suffix"]
        self._dec.append(lambda tokens: [t.replace(suffix, "" if i == len(tokens) - 1 else " ")
                                         for i, t in enumerate(tokens)])

    def _op_dec_ctc(self, ins):
        pad, delim, cleanup = ins["pad_token"], ins["word_delimiter_token"], ins["cleanup"]

        def run(tokens):
            out, prev = [], None
            for t in tokens:
                if t != prev and t != pad:
                    t2 = _cleanup(t) if cleanup else t
                    out.append(t2.replace(delim, " ") if cleanup else t2)
                prev = t
            return out
        self._dec.append(run)

    # -- added tokens -----------------------------------------------------------------------------------
    def _added_matcher(self, normalized: bool):
        items = [a for a in self.program.added if bool(a["normalized"]) == normalized]
        if not items:
            return None
        forms = {}
        for a in items:
            form = self._normalize(a["content"])[0] if normalized else a["content"]
            if form:
                forms[form] = a["id"]
        if not forms:
            return None
        order = sorted(forms, key=lambda f: -len(f))
        return re.compile("|".join(re.escape(f) for f in order)), forms


#: Seconds one regular-expression call from a tokenizer program may take (``NAC_REGEX_TIMEOUT``).
REGEX_TIMEOUT = float(os.environ.get("NAC_REGEX_TIMEOUT", "2.0"))
#: Most tokens `enable_padding(length=...)` and `enable_truncation(max_length=...)` accept.
MAX_LENGTH = 1 << 20


class _Regex:
    """A regular expression from a tokenizer program, compiled with the `regex` module (Unicode
    classes as Hugging Face's Oniguruma has them), every call bounded by `REGEX_TIMEOUT`: a
    pathological pattern (catastrophic backtracking) is refused instead of hanging the caller.

    Raises (NacFormatError): an invalid pattern, at construction; a call over the time limit."""

    def __init__(self, pattern: str, where: str):
        import regex

        self.where = where
        try:
            self.pat = regex.compile(pattern)
        except (regex.error, ValueError, OverflowError, RecursionError, MemoryError) as exc:
            raise NacFormatError(f"{where}: regular expression {pattern[:80]!r} is invalid ({exc})") from None

    def sub(self, content: str, text: str) -> str:
        """``text`` with every match replaced by ``content`` (literally)."""
        return self._bounded(text, lambda: self.pat.sub(lambda m: content, text, timeout=REGEX_TIMEOUT))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every match in ``text``."""
        return self._bounded(text, lambda: [(m.start(), m.end()) for m in
                                            self.pat.finditer(text, timeout=REGEX_TIMEOUT)])

    def _bounded(self, text: str, call):
        try:
            return call()
        except TimeoutError:
            raise NacFormatError(f"{self.where}: regular expression {self.pat.pattern[:80]!r} took more than "
                                 f"{REGEX_TIMEOUT:g} s on a text of {len(text)} characters (catastrophic "
                                 f"backtracking); refusing it") from None


def _integer(v) -> int | None:
    """``v`` as a Python int if it is an integer (numpy's included, bool excluded), else None."""
    if isinstance(v, np.integer):
        return int(v)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _each_char(ins: dict, ops: frozenset) -> bool:
    """Whether normaliser instruction ``ins`` maps each character on its own: its op is in ``ops``,
    or it replaces one character by a string."""
    return ins["op"] in ops or (ins["op"] == "NORM.REPLACE" and ins["kind"] == "string" and len(ins["pattern"]) == 1)


class _CharMap(dict):
    """``str.translate``'s table for a run of per-character normaliser steps: code point -> the
    steps' output for that character alone (None when they delete it), computed on first sight.
    At most `MAX_ENTRIES` characters are kept, so text holding every code point cannot make it grow
    past a few MB; the rest are recomputed each time they occur."""

    MAX_ENTRIES = 1 << 16

    def __init__(self, steps: list):
        super().__init__()
        self._steps = steps

    def __missing__(self, c: int) -> str | None:
        s = chr(c)
        for fn in self._steps:
            s, _ = fn(s)
        out = s or None
        if len(self) < self.MAX_ENTRIES:
            self[c] = out
        return out


class _Lazy:
    """A value built on first use (tables only non-ASCII text needs; keeps start-up short)."""

    def __init__(self, build):
        self._build, self._value = build, None

    def __call__(self):
        if self._value is None:
            self._value = self._build()
        return self._value


def _find_added(text: str, matcher, added: dict) -> list[tuple[int, int, int | None]]:
    """Hugging Face ``AddedVocabulary::find_matches``: leftmost-longest matches of the added
    tokens, with their ``single_word``/``lstrip``/``rstrip`` rules; the gaps in between."""
    pattern, forms = matcher
    out = []
    last = 0
    for m in pattern.finditer(text):
        s, e = m.start(), m.end()
        a = added[forms[m.group()]]
        if a["single_word"]:
            if (s > 0 and _WORD_END.search(text, 0, s)) or (e < len(text) and _WORD_START.match(text, e)):
                continue
        if a["lstrip"]:
            k = s
            while k > last and text[k - 1] in _WS:
                k -= 1
            s = k
        if a["rstrip"]:
            while e < len(text) and text[e] in _WS:
                e += 1
        if last < s:
            out.append((last, s, None))
        out.append((s, e, a["id"]))
        last = e
    if last < len(text) or not out:
        out.append((last, len(text), None))
    return out


_WS = frozenset(chr(c) for c in (list(range(9, 14)) + [0x20, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B))
                                 + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]))
_WORD_END = re.compile(r"\w\Z")
_WORD_START = re.compile(r"\w")


def _split_by_matches(w: str, matches: list[tuple[int, int]], behaviour: int, invert: bool) -> list[tuple[int, int]]:
    """Hugging Face ``NormalizedString::split`` over regex matches: the kept pieces."""
    events, last = [], 0
    for a, b in matches:
        if a == b:
            continue
        if last < a:
            events.append((last, a, False))
        events.append((a, b, True))
        last = b
    if last < len(w):
        events.append((last, len(w), False))
    if invert:
        events = [(a, b, not m) for a, b, m in events]
    if behaviour in (0, 1):  # removed / isolated
        pieces = [[a, b, m and behaviour == 0] for a, b, m in events]
    else:  # the fold of split_words in kernels.py (2, 4 left to right; 3 right to left)
        pieces, prev = [], False
        for a, b, m in (reversed(events) if behaviour == 3 else events):
            if ((m == prev) if behaviour == 4 else (m and not prev)) and pieces:
                if behaviour == 3:
                    pieces[-1][0] = a  # merged with the next piece: extend it leftwards
                else:
                    pieces[-1][1] = b
            else:
                pieces.append([a, b, False])
            prev = m
        if behaviour == 3:
            pieces.reverse()
    return [(a, b) for a, b, rm in pieces if not rm and b > a]


def _truncate(a: list[int], b: list[int] | None, t: dict, n_added: int):
    """Hugging Face ``truncate_encodings`` (max length minus the template's tokens)."""
    max_len = t["max_length"] - n_added
    if max_len < 0:
        raise NacInputError(f"truncation max_length {t['max_length']} is shorter than the {n_added} special tokens")
    total = len(a) + len(b or [])
    if total <= max_len:
        return a, b
    left = t.get("direction", "Right") == "Left"

    def cut(seq, n):
        return seq[len(seq) - n:] if left else seq[:n]
    strategy = t.get("strategy", "LongestFirst")
    if strategy == "LongestFirst":
        if b is None:
            return cut(a, max_len), b
        n1, n2 = len(a), len(b)
        swap = n1 > n2
        if swap:
            n1, n2 = n2, n1
        n2 = n1 if n1 > max_len else max(n1, max_len - n1)
        if n1 + n2 > max_len:
            n1 = max_len // 2
            n2 = n1 + max_len % 2
        if swap:
            n1, n2 = n2, n1
        return cut(a, n1), cut(b, n2)
    to_remove = total - max_len
    if strategy == "OnlySecond" and b is None:
        raise NacInputError("truncation strategy only_second needs a pair of texts")
    target = a if strategy == "OnlyFirst" else b
    if len(target) <= to_remove:
        raise NacInputError(f"cannot truncate: the {'first' if strategy == 'OnlyFirst' else 'second'} text is "
                            f"too short to remove {to_remove} tokens")
    target = cut(target, len(target) - to_remove)
    return (target, b) if strategy == "OnlyFirst" else (a, target)


def _count(v, name: str, lo: int, hi: int = MAX_LENGTH) -> int:
    """``v`` as an int in [lo, hi]; NacInputError naming ``name`` otherwise."""
    i = _integer(v)
    if i is None or not lo <= i <= hi:
        raise NacInputError(f"{name} must be an integer in [{lo}, {hi}], not {v!r}")
    return i


def _choice(v, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v.lower() not in choices:
        raise NacInputError(f"{name} must be one of {', '.join(choices)}, not {v!r}")
    return v.lower()


def _code_points(text: str) -> np.ndarray:
    """``text``'s code points as a writable int32 array (lone surrogates kept), for the kernels."""
    return np.frombuffer(bytearray(text.encode("utf-32-le", "surrogatepass")), np.int32)


def _text(x, i: int) -> str:
    if isinstance(x, (bytes, bytearray)):
        try:
            x = bytes(x).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NacInputError(f"input {i}: bytes are not valid UTF-8 ({exc})") from None
    if not isinstance(x, str):
        raise NacInputError(f"input {i}: expected text (str), got {type(x).__name__}")
    if x.isascii():
        return x
    try:
        x.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NacInputError(f"input {i}: text holds a lone surrogate at position {exc.start} "
                            f"({x[exc.start]!r}); it is not valid Unicode text") from None
    return x


def _re_range(a: int, b: int) -> str:
    return re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"


def _is_hex2(s: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in s)


_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _cleanup(s: str) -> str:
    for a, b in _CLEANUP:
        s = s.replace(a, b)
    return s
