"""Compile a Hugging Face ``tokenizer.json`` into a TISA program.

The pipeline of Hugging Face ``tokenizers`` (added tokens → normaliser → pre-tokeniser → model →
post-processor; decoder on the way back) becomes a flat list of instructions plus data tables.
Every component of the file is either translated or rejected here with a :class:`nac.NacError`
naming its path and type, so a program that compiles never meets an unsupported step at run time.
"""
from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import numpy as np

from nac.errors import NacError
from nac.tokenizer_vm import kernels as K
from nac.tokenizer_vm import unicode as U
from nac.tokenizer_vm.program import Program
from nac.tokenizer_vm.unicode import bytes_to_unicode

#: The GPT-2 split pattern (Hugging Face ByteLevel's built-in regex); a Split with exactly this
#: pattern runs on the VM's Numba scanner instead of the string-level regex engine.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


_U64, _I32 = (1 << 64) - 1, (1 << 31) - 1
_POW10 = [float(f"1e{k}") for k in range(309)]
_JSON_NUMBER = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?")


def _overflows(a: int, digit: int, limit: int) -> bool:
    return a > limit // 10 or (a == limit // 10 and digit > limit % 10)


def serde_f64(text: str) -> float:
    """A JSON number as ``serde_json`` (without its ``float_roundtrip`` feature) reads it, which is
    how ``tokenizers`` loads a ``tokenizer.json``: the decimal digits as a u64 significand (digits
    that would overflow it ignored), converted to f64, then multiplied or divided by a power of
    ten (de.rs ``f64_from_parts``). This is not always the correctly rounded value Python's
    ``float`` gives: 1 ulp off for about one Unigram score in five, which decides ties between
    segmentations made of the same pieces. Raises ValueError for a malformed or too-large number."""
    m = _JSON_NUMBER.fullmatch(text)
    if m is None:
        raise ValueError(f"not a JSON number: {text[:40]!r}")
    negative, integer, fraction, exp_sign, exp_digits = m.groups()
    sig = exp = 0
    long_integer = False
    for ch in integer:
        d = ord(ch) - 48
        if long_integer or _overflows(sig, d, _U64):  # parse_long_integer: further digits scale only
            long_integer = True
            exp += 1
        else:
            sig = sig * 10 + d
    for ch in fraction or "":
        d = ord(ch) - 48
        if _overflows(sig, d, _U64):
            break  # parse_decimal_overflow: the remaining digits are ignored
        sig, exp = sig * 10 + d, exp - 1
    if exp_digits is not None:
        e = 0
        for ch in exp_digits:
            d = ord(ch) - 48
            if _overflows(e, d, _I32):  # parse_exponent_overflow
                if sig == 0 or exp_sign == "-":
                    return -0.0 if negative else 0.0
                raise ValueError(f"number out of range: {text[:40]!r}")
            e = e * 10 + d
        exp = exp - e if exp_sign == "-" else exp + e
    f = float(sig)
    while True:
        if abs(exp) < len(_POW10):
            if exp >= 0:
                f *= _POW10[exp]
                if f == math.inf:
                    raise ValueError(f"number out of range: {text[:40]!r}")
            else:
                f /= _POW10[-exp]
            break
        if f == 0.0:
            break
        if exp >= 0:
            raise ValueError(f"number out of range: {text[:40]!r}")
        f /= 1e308
        exp += 308
    return -f if negative else f


def compile_tokenizer(source: str | bytes | Path | dict, name: str = "") -> Program:
    """Compile a ``tokenizer.json`` (a path, its bytes/text, or the parsed dict) to a program.

    Raises:
        NacError: the file is missing or not JSON, or a component is unsupported or malformed; the
            message names the component (e.g. ``normalizer.normalizers[1]``) and its ``type``.
    """
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        path = Path(source)
        if not path.is_file():
            raise NacError(f"tokenizer file {path} does not exist")
        name = name or str(path)
        source = path.read_bytes()
    if isinstance(source, (bytes, bytearray, str)):
        try:
            doc = json.loads(source, parse_float=serde_f64)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a number out of f64's range
            raise NacError(f"{name or 'tokenizer.json'}: not valid JSON ({exc})") from None
    else:
        doc = source
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise NacError(f"{name or 'tokenizer.json'}: not a Hugging Face tokenizer.json (no 'model' object)")
    return _Compiler(doc, name or "tokenizer.json").run()


class _Compiler:
    def __init__(self, doc: dict, name: str):
        self.doc, self.name = doc, name
        self.code: list[dict] = []
        self.tables: dict[str, np.ndarray] = {}
        self.byte_mode = False
        self.array_stage = False  # a pre-tokeniser step that works on code-point arrays was emitted

    def fail(self, where: str, what: str) -> NacError:
        return NacError(f"{self.name}: {where}: {what}")

    # -- driver -----------------------------------------------------------------------------------
    def run(self) -> Program:
        idx, blocks = U.class_table()
        self.tables["class_index"], self.tables["class_blocks"] = idx, blocks
        added = self.added_tokens()
        self.code.append({"op": "ADDED.SPLIT", "count": len(added)})
        self.normalizer(self.doc.get("normalizer"), "normalizer")
        self.pre_tokenizer(self.doc.get("pre_tokenizer"), "pre_tokenizer")
        vocab = self.model(self.doc["model"], "model")
        self.post_processor(self.doc.get("post_processor"), "post_processor")
        self.decoder(self.doc.get("decoder"), "decoder")
        self.vocab_table(vocab, added)
        return Program(self.code, self.tables, added, self.truncation(), self.padding(), self.name)

    def added_tokens(self) -> list[dict]:
        out = []
        for i, t in enumerate(self.doc.get("added_tokens") or []):
            if not isinstance(t, dict) or not isinstance(t.get("id"), int) or not isinstance(t.get("content"), str) \
                    or not t["content"]:
                raise self.fail(f"added_tokens[{i}]", f"malformed entry {t!r}")
            out.append({k: t.get(k, d) for k, d in (("id", 0), ("content", ""), ("single_word", False), ("lstrip", False),
                                                     ("rstrip", False), ("normalized", True), ("special", False))})
        return sorted(out, key=lambda a: a["id"])

    # -- normalisers --------------------------------------------------------------------------------
    def normalizer(self, n, where: str) -> None:
        if n is None:
            return
        t = _type(n, where, self)
        emit = self.code.append
        if t == "Sequence":
            for i, sub in enumerate(n.get("normalizers") or []):
                self.normalizer(sub, f"{where}.normalizers[{i}]")
        elif t == "BertNormalizer":
            if n.get("clean_text", True):
                self.char_op("NORM.DROP", U.CONTROL, [0, 0xFFFD])
                self.char_op("NORM.MAP_SPACE", U.WS)
            if n.get("handle_chinese_chars", True):
                self.char_op("NORM.PAD", U.CJK)
            strip = n.get("strip_accents")
            if strip if strip is not None else n.get("lowercase", True):
                self.nf("NFD")
                self.char_op("NORM.DROP", U.MN)
            if n.get("lowercase", True):
                self.lower()
        elif t in ("NFC", "NFD", "NFKC", "NFKD"):
            self.nf(t)
        elif t == "Lowercase":
            self.lower()
        elif t == "StripAccents":
            self.char_op("NORM.DROP", U.MARK)
        elif t == "Replace":
            kind, pattern = _pattern(n.get("pattern"), where, self)
            emit({"op": "NORM.REPLACE", "kind": kind, "pattern": pattern, "content": str(n.get("content", ""))})
        elif t == "Strip":
            emit({"op": "NORM.STRIP", "left": bool(n.get("strip_left", True)), "right": bool(n.get("strip_right", True))})
        elif t == "Prepend":
            emit({"op": "NORM.PREPEND", "text": str(n.get("prepend", ""))})
        elif t == "Precompiled":  # SentencePiece's compiled rules (T5, ALBERT, XLM-R): see tokenizer_vm.precompiled
            from nac.tokenizer_vm.precompiled import read_charsmap, rule_tables

            charsmap = n.get("precompiled_charsmap")
            if not isinstance(charsmap, str):  # (an empty one is refused below, as tokenizers refuses it)
                raise self.fail(where, "precompiled_charsmap must be a base64 string")
            rules = read_charsmap(charsmap, f"{self.name}: {where}")
            name = f"precompiled_{zlib.crc32(charsmap.encode()):08x}"
            for key, table in rule_tables(rules).items():
                self.tables[f"{name}_{key}"] = table
            emit({"op": "NORM.PRECOMPILED", "map": name, "rules": len(rules)})
        elif t == "Nmt":  # SentencePiece's NMT rule, as tokenizers' `Nmt` applies it: drop, then map to space
            self.char_op("NORM.DROP", 0, NMT_DROP)
            self.char_op("NORM.MAP_SPACE", 0, NMT_SPACE)
        else:
            raise self.fail(where, f"normaliser type {t!r} is not supported by TISA (supported: BertNormalizer, "
                                   f"NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Replace, Strip, Prepend, Nmt, "
                                   f"Precompiled, Sequence)")

    def char_op(self, op: str, classes: int, chars=()) -> None:
        """A character-class normaliser step; its code-point ranges go in a table so the VM needs
        no class computation at load time."""
        ranges = sorted(U.ranges_of(self.tables["class_index"], self.tables["class_blocks"], classes)
                        + [(c, c) for c in chars])
        name = f"ranges_{classes}" + (f"_{zlib.crc32(np.array(chars, np.int32).tobytes()):08x}" if chars else "")
        self.tables[name] = np.array(ranges, np.int32).reshape(-1)
        self.code.append({"op": op, "classes": classes, "chars": list(chars), "ranges_table": name})

    def nf(self, form: str) -> None:
        """A Unicode normalisation step; characters the reference's Unicode version does not know
        (table ``nf_assigned``: the ranges it does) pass through unchanged."""
        if "nf_assigned" not in self.tables:
            self.tables["nf_assigned"] = np.array(U.legacy_ranges(U.NORMALIZATION_VERSION), np.int32).reshape(-1)
        self.code.append({"op": f"NORM.{form}", "unicode": U.NORMALIZATION_VERSION, "assigned_table": "nf_assigned"})

    def lower(self) -> None:
        if "lower_src" not in self.tables:
            self.tables["lower_src"], self.tables["lower_off"], self.tables["lower_dst"] = U.lowercase_table()
        self.code.append({"op": "NORM.LOWER"})

    # -- pre-tokenisers -----------------------------------------------------------------------------
    def split(self, kind: int, behaviour: str, invert: bool = False, classes: int = 0, literal: str = "") -> None:
        self.array_stage = True
        self.code.append({"op": "PRE.SPLIT", "kind": ["class", "literal", "gpt2", "words"][kind], "classes": classes,
                          "literal": literal, "behaviour": behaviour, "invert": invert})

    def pre_tokenizer(self, p, where: str) -> None:
        if p is None:
            return
        t = _type(p, where, self)
        if t == "Sequence":
            for i, sub in enumerate(p.get("pretokenizers") or []):
                self.pre_tokenizer(sub, f"{where}.pretokenizers[{i}]")
        elif t == "BertPreTokenizer":
            self.split(K.SPLIT_CLASS, "removed", classes=U.WS)
            self.split(K.SPLIT_CLASS, "isolated", classes=U.PUNCT)
        elif t == "Whitespace":
            self.split(K.SPLIT_WORDS, "removed", invert=True)
        elif t == "WhitespaceSplit":
            self.split(K.SPLIT_CLASS, "removed", classes=U.WS)
        elif t == "Punctuation":
            self.split(K.SPLIT_CLASS, _behaviour(p.get("behavior", "Isolated"), where, self), classes=U.PUNCT)
        elif t == "Digits":
            self.split(K.SPLIT_CLASS, "isolated" if p.get("individual_digits") else "contiguous", classes=U.NUMBER)
        elif t == "CharDelimiterSplit":
            self.split(K.SPLIT_LITERAL, "removed", literal=str(p.get("delimiter", " ")))
        elif t == "Metaspace":
            repl = str(p.get("replacement", "▁"))
            if len(repl) != 1:
                raise self.fail(where, f"Metaspace replacement {repl!r} must be one character")
            scheme = p.get("prepend_scheme") or ("always" if p.get("add_prefix_space", True) else "never")
            if scheme not in ("always", "first", "never"):
                raise self.fail(where, f"Metaspace prepend_scheme {scheme!r} is not always/first/never")
            self.array_stage = True
            self.code.append({"op": "PRE.METASPACE", "replacement": repl, "prepend": scheme})
            if p.get("split", True):
                self.split(K.SPLIT_LITERAL, "merged_with_next", literal=repl)
        elif t == "ByteLevel":
            self.array_stage = True
            if p.get("add_prefix_space", True):
                self.code.append({"op": "PRE.PREFIX_SPACE"})
            if p.get("use_regex", True):
                self.split(K.SPLIT_GPT2, "isolated")
            self.code.append({"op": "PRE.UTF8"})
            self.byte_mode = True
        elif t == "Split":
            kind, pattern = _pattern(p.get("pattern"), where, self)
            behaviour = _behaviour(p.get("behavior", "Isolated"), where, self)
            invert = bool(p.get("invert", False))
            if kind == "string":
                self.split(K.SPLIT_LITERAL, behaviour, invert, literal=pattern)
            elif pattern == GPT2_PATTERN:
                self.split(K.SPLIT_GPT2, behaviour, invert)
            else:
                if self.array_stage:
                    raise self.fail(where, "a Split by regular expression after a character-level pre-tokeniser "
                                           "is not supported by TISA (only leading regular-expression splits)")
                try:
                    import regex
                    regex.compile(pattern)
                except Exception as exc:
                    raise self.fail(where, f"Split pattern {pattern!r} does not compile ({exc})") from None
                self.code.append({"op": "PRE.REGEX", "pattern": pattern, "behaviour": behaviour, "invert": invert})
        else:
            raise self.fail(where, f"pre-tokeniser type {t!r} is not supported by TISA (supported: BertPreTokenizer, "
                                   f"ByteLevel, Metaspace, Whitespace, WhitespaceSplit, Punctuation, Digits, Split, "
                                   f"CharDelimiterSplit, Sequence)")

    # -- models ---------------------------------------------------------------------------------------
    def key(self, token: str) -> list[int] | None:
        """A vocabulary entry as the model sees it: code points, or raw bytes in byte mode."""
        if not self.byte_mode:
            return [ord(c) for c in token]
        out = []
        for c in token:
            b = _CHAR_BYTE.get(c)
            if b is None:
                return None
            out.append(b)
        return out

    def key_table(self, entries: list[tuple[str, int]], where: str) -> dict:
        keys, off, ids = [], [0], []
        for tok, i in entries:
            k = self.key(tok)
            if k is None:
                continue
            keys.extend(k)
            off.append(len(keys))
            ids.append(i)
        self.tables["keys"] = np.array(keys, np.int32)
        self.tables["keys_off"] = np.array(off, np.int64)
        self.tables["keys_id"] = np.array(ids, np.int32)
        self.tables["keys_hash"] = K.build_hash(self.tables["keys"], self.tables["keys_off"])
        return {"keys_table": "keys"}

    def affix(self, s, where: str, what: str) -> list[int]:
        if not s:
            return []
        k = self.key(s)
        if k is None:
            raise self.fail(where, f"{what} {s!r} cannot be expressed in byte-level characters")
        return k

    def byte_ids(self, vocab: dict[str, int]) -> None:
        self.tables["byte_ids"] = np.array([vocab.get(f"<0x{b:02X}>", -1) for b in range(256)], np.int32)

    def model(self, m: dict, where: str) -> dict[int, str]:
        t = _type(m, where, self)
        if t in ("WordPiece", "WordLevel", "BPE"):
            vocab = m.get("vocab")
            if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
                raise self.fail(f"{where}.vocab", "must be an object mapping tokens to integer ids")
            unk = m.get("unk_token")
            unk_id = vocab.get(unk, -1) if unk is not None else -1
            ops = self.key_table(list(vocab.items()), where)
            if t == "WordPiece":
                if unk_id < 0:
                    raise self.fail(where, f"unk_token {unk!r} is not in the vocabulary")
                self.code.append({"op": "MODEL.WORDPIECE", **ops, "unk": unk_id,
                                  "prefix": self.affix(m.get("continuing_subword_prefix", "##"), where, "prefix"),
                                  "max_chars": int(m.get("max_input_chars_per_word", 100))})
            elif t == "WordLevel":
                if unk_id < 0:
                    raise self.fail(where, f"unk_token {unk!r} is not in the vocabulary")
                self.code.append({"op": "MODEL.WORDLEVEL", **ops, "unk": unk_id})
            else:
                if m.get("dropout") not in (None, 0, 0.0):
                    raise self.fail(where, f"BPE dropout {m['dropout']} makes encoding random; TISA compiles "
                                           f"deterministic tokenizers only (set dropout to null)")
                prefix = m.get("continuing_subword_prefix") or ""
                suffix = m.get("end_of_word_suffix") or ""
                pairs, ranks, news = [], [], []
                cut = len(prefix.encode())
                for r, mg in enumerate(m.get("merges") or []):
                    a, b = mg.split(" ", 1) if isinstance(mg, str) else (mg if isinstance(mg, list) and len(mg) == 2
                                                                        else (None, None))
                    if a is None:
                        raise self.fail(f"{where}.merges[{r}]", f"malformed merge {mg!r}")
                    new = a + b.encode()[cut:].decode("utf-8", "surrogatepass")
                    for tok in (a, b, new):
                        if tok not in vocab:
                            raise self.fail(f"{where}.merges[{r}]", f"merge {mg!r} uses {tok!r}, which is not in the vocabulary")
                    pairs.append((vocab[a], vocab[b]))
                    ranks.append(r)
                    news.append(vocab[new])
                mk, mr, mn = K.merge_table(np.array(pairs, np.int64).reshape(-1, 2), np.array(ranks), np.array(news))
                self.tables["merge_keys"], self.tables["merge_rank"], self.tables["merge_new"] = mk, mr, mn
                self.byte_ids(vocab)
                self.code.append({"op": "MODEL.BPE", **ops, "merges_table": "merge_keys", "unk": unk_id,
                                  "prefix": self.affix(prefix, where, "continuing_subword_prefix"),
                                  "suffix": self.affix(suffix, where, "end_of_word_suffix"),
                                  "byte_fallback": bool(m.get("byte_fallback", False)),
                                  "fuse_unk": bool(m.get("fuse_unk", False)),
                                  "ignore_merges": bool(m.get("ignore_merges", False)), "merges": len(pairs)})
            return {i: tok for tok, i in vocab.items()}
        if t == "Unigram":
            vocab = m.get("vocab")
            if not isinstance(vocab, list) or not all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                                                      for v in vocab):
                raise self.fail(f"{where}.vocab", "must be a list of [piece, score] pairs")
            if self.byte_mode:
                raise self.fail(where, "a Unigram model after a ByteLevel pre-tokeniser is not supported by TISA")
            unk_id = m.get("unk_id")
            unk_id = -1 if unk_id is None else int(unk_id)
            scores = np.array([float(s) for _, s in vocab], np.float64)
            ops = self.key_table([(p, i) for i, (p, _) in enumerate(vocab)], where)
            self.tables["scores"] = scores
            self.byte_ids({p: i for i, (p, _) in enumerate(vocab)})
            min_score = float(scores.min()) if scores.size else 0.0
            self.code.append({"op": "MODEL.UNIGRAM", **ops, "scores_table": "scores", "unk": unk_id,
                              "unk_score": min_score - 10.0, "byte_fallback": bool(m.get("byte_fallback", False)),
                              "max_len": max((len(p) for p, _ in vocab), default=1)})
            return {i: p for i, (p, _) in enumerate(vocab)}
        raise self.fail(where, f"model type {t!r} is not supported by TISA (supported: WordPiece, BPE, Unigram, WordLevel)")

    # -- post-processing ------------------------------------------------------------------------------
    def post_processor(self, p, where: str) -> None:
        templates = []
        self._templates(p, where, templates)
        if len(templates) > 1:
            raise self.fail(where, "more than one special-token template in a Sequence is not supported")
        if templates:
            single, pair = templates[0]
            self.code.append({"op": "POST.TEMPLATE", "single": single, "pair": pair})
        trim = self._trim_offsets(p)
        if trim is not None:
            self.code.append({"op": "POST.TRIM_OFFSETS", "prefix_space": trim})

    def _trim_offsets(self, p) -> bool | None:
        """add_prefix_space of the first ByteLevel/RoBERTa post-processor that trims offsets."""
        if not isinstance(p, dict):
            return None
        if p.get("type") == "Sequence":
            return next((t for t in map(self._trim_offsets, p.get("processors") or []) if t is not None), None)
        if p.get("type") in ("ByteLevel", "RobertaProcessing") and p.get("trim_offsets", True):
            return bool(p.get("add_prefix_space", True))
        return None

    def _templates(self, p, where: str, out: list) -> None:
        if p is None:
            return
        t = _type(p, where, self)
        if t == "Sequence":
            for i, sub in enumerate(p.get("processors") or []):
                self._templates(sub, f"{where}.processors[{i}]", out)
        elif t == "ByteLevel":
            return  # offsets only
        elif t in ("BertProcessing", "RobertaProcessing"):
            try:
                cls, sep = int(p["cls"][1]), int(p["sep"][1])
            except (KeyError, TypeError, ValueError, IndexError):
                raise self.fail(where, f"{t} needs cls and sep as [token, id]") from None
            b = 1 if t == "BertProcessing" else 0
            single = [["S", [cls], 0], ["A", 0], ["S", [sep], 0]]
            pair = single + ([["B", b], ["S", [sep], b]] if b else [["S", [sep], 0], ["B", 0], ["S", [sep], 0]])
            out.append((single, pair))
        elif t == "TemplateProcessing":
            specials = p.get("special_tokens") or {}

            def tpl(items, key):
                res = []
                for i, it in enumerate(items or []):
                    if "Sequence" in it:
                        res.append([it["Sequence"]["id"], int(it["Sequence"].get("type_id", 0))])
                    elif "SpecialToken" in it:
                        name = it["SpecialToken"]["id"]
                        if name not in specials or not all(isinstance(x, int) for x in specials[name].get("ids", [None])):
                            raise self.fail(f"{where}.{key}[{i}]", f"special token {name!r} has no ids in special_tokens")
                        res.append(["S", list(specials[name]["ids"]), int(it["SpecialToken"].get("type_id", 0))])
                    else:
                        raise self.fail(f"{where}.{key}[{i}]", f"unknown template piece {it!r}")
                return res
            out.append((tpl(p.get("single"), "single"), tpl(p.get("pair"), "pair")))
        else:
            raise self.fail(where, f"post-processor type {t!r} is not supported by TISA (supported: "
                                   f"TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence)")

    # -- decoders -------------------------------------------------------------------------------------
    def decoder(self, d, where: str) -> None:
        if d is None:
            return
        t = _type(d, where, self)
        emit = self.code.append
        if t == "Sequence":
            for i, sub in enumerate(d.get("decoders") or []):
                self.decoder(sub, f"{where}.decoders[{i}]")
        elif t == "WordPiece":
            emit({"op": "DEC.WORDPIECE", "prefix": d.get("prefix", "##"), "cleanup": bool(d.get("cleanup", True))})
        elif t == "ByteLevel":
            emit({"op": "DEC.BYTELEVEL"})
        elif t == "Metaspace":
            scheme = d.get("prepend_scheme") or ("always" if d.get("add_prefix_space", True) else "never")
            emit({"op": "DEC.METASPACE", "replacement": d.get("replacement", "▁"), "prepend": scheme})
        elif t == "ByteFallback":
            emit({"op": "DEC.BYTE_FALLBACK"})
        elif t == "Fuse":
            emit({"op": "DEC.FUSE"})
        elif t == "Strip":
            emit({"op": "DEC.STRIP", "content": d.get("content", " "), "start": int(d.get("start", 0)),
                  "stop": int(d.get("stop", 0))})
        elif t == "Replace":
            kind, pattern = _pattern(d.get("pattern"), where, self)
            emit({"op": "DEC.REPLACE", "kind": kind, "pattern": pattern, "content": d.get("content", "")})
        elif t == "BPEDecoder":
            emit({"op": "DEC.BPE", "suffix": d.get("suffix", "</w>")})
        elif t == "CTC":
            emit({"op": "DEC.CTC", "pad_token": d.get("pad_token", "<pad>"),
                  "word_delimiter_token": d.get("word_delimiter_token", "|"), "cleanup": bool(d.get("cleanup", True))})
        else:
            raise self.fail(where, f"decoder type {t!r} is not supported by TISA")

    # -- tables shared by every program ---------------------------------------------------------------
    def vocab_table(self, model_vocab: dict[int, str], added: list[dict]) -> None:
        strings = dict(model_vocab)
        for a in added:
            strings[a["id"]] = a["content"]
        n = max(strings) + 1 if strings else 0
        cps, off = [], [0]
        for i in range(n):
            cps.extend(map(ord, strings.get(i, "")))
            off.append(len(cps))
        self.tables["vocab"] = np.array(cps, np.int32)
        self.tables["vocab_off"] = np.array(off, np.int64)
        self.tables["vocab_missing"] = np.array([i for i in range(n) if i not in strings], np.int32)

    def truncation(self) -> dict | None:
        t = self.doc.get("truncation")
        if not t:
            return None
        return {"max_length": int(t.get("max_length", 512)), "strategy": str(t.get("strategy", "LongestFirst")),
                "direction": str(t.get("direction", "Right")), "stride": int(t.get("stride", 0))}

    def padding(self) -> dict | None:
        p = self.doc.get("padding")
        if not p:
            return None
        strat = p.get("strategy", "BatchLongest")
        length = strat.get("Fixed") if isinstance(strat, dict) else None
        return {"length": length, "direction": str(p.get("direction", "Right")), "pad_id": int(p.get("pad_id", 0)),
                "pad_type_id": int(p.get("pad_type_id", 0)), "pad_token": str(p.get("pad_token", "[PAD]")),
                "pad_to_multiple_of": p.get("pad_to_multiple_of")}


_CHAR_BYTE = {c: b for b, c in bytes_to_unicode().items()}

#: tokenizers' `Nmt` normaliser (SentencePiece's NMT rule): control characters it removes, and
#: the characters it maps to U+0020 (read off tokenizers 0.23 over every code point).
NMT_DROP = tuple(list(range(0x01, 0x09)) + [0x0B] + list(range(0x0E, 0x20)) + [0x7F, 0x8F, 0x9F])
NMT_SPACE = (0x09, 0x0A, 0x0C, 0x0D, 0x1680, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2028, 0x2029, 0x2581,
             0xFEFF, 0xFFFD)


def _type(node, where: str, c: _Compiler) -> str:
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise c.fail(where, f"expected an object with a 'type', got {node!r:.80}")
    return node["type"]


def _pattern(p, where: str, c: _Compiler) -> tuple[str, str]:
    if isinstance(p, dict) and isinstance(p.get("String"), str):
        return "string", p["String"]
    if isinstance(p, dict) and isinstance(p.get("Regex"), str):
        return "regex", p["Regex"]
    raise c.fail(where, f"pattern must be {{'String': …}} or {{'Regex': …}}, got {p!r:.80}")


def _behaviour(b, where: str, c: _Compiler) -> str:
    name = "".join("_" + ch.lower() if ch.isupper() else ch for ch in str(b)).lstrip("_")
    if name not in K.BEHAVIOURS:
        raise c.fail(where, f"split behaviour {b!r} is not one of Removed, Isolated, MergedWithPrevious, "
                            f"MergedWithNext, Contiguous")
    return name
