"""SentencePiece's ``precompiled_charsmap`` (the ``Precompiled`` normaliser of T5, ALBERT,
XLM-R, mBART, Marian... ``tokenizer.json`` files).

The charsmap is SentencePiece's normalisation rule set (e.g. ``nmt_nfkc``) compiled to a
darts-clone double-array trie over UTF-8 keys, whose values are offsets into a blob of
NUL-terminated replacement strings. Layout: ``u32 trie_size`` (bytes), ``trie_size / 4``
little-endian u32 units, then the replacements.

At export, `read_charsmap` walks the trie and lists every (key, replacement) rule; the TISA
program stores them as tables, so the VM never reads the trie. The VM applies them as
Hugging Face ``tokenizers`` does (``normalizers::Precompiled``, after the ``spm_precompiled``
crate): text is cut into extended grapheme clusters (Unicode UAX #29); a cluster of fewer than
6 UTF-8 bytes is replaced whole by the rule of the *shortest* key that is a prefix of it, if
any; otherwise each of its characters is replaced by its own rule, or kept.
"""
from __future__ import annotations

import base64
import binascii

import numpy as np

from nac.errors import NacError

MAX_RULES = 1 << 20


def read_charsmap(charsmap, where: str) -> dict[str, str]:
    """Every rule of a ``precompiled_charsmap`` (base64 text, as in ``tokenizer.json``, or bytes).

    Returns:
        key -> replacement, both non-empty-key Python strings.
    Raises:
        NacError: not base64, a trie size that does not fit, a value outside the replacement
            blob, or a key or replacement that is not UTF-8.
    """
    try:
        blob = base64.b64decode(charsmap, validate=True) if isinstance(charsmap, str) else bytes(charsmap)
    except (binascii.Error, ValueError):
        raise NacError(f"{where}: precompiled_charsmap is not base64") from None
    if len(blob) < 4:
        raise NacError(f"{where}: precompiled_charsmap of {len(blob)} bytes is too short")
    size = int.from_bytes(blob[:4], "little")
    if size % 4 or 4 + size > len(blob):
        raise NacError(f"{where}: precompiled_charsmap's trie of {size} bytes does not fit in {len(blob)} bytes")
    units = np.frombuffer(blob, "<u4", size // 4, 4).astype(np.int64)
    pool = blob[4 + size:]
    if units.size == 0:
        return {}

    def replacement(value: int) -> str:
        if value >= len(pool):
            raise NacError(f"{where}: precompiled_charsmap points outside its replacements ({value})")
        end = pool.find(b"\0", value)
        try:
            return pool[value:end if end >= 0 else len(pool)].decode("utf-8")
        except UnicodeDecodeError:
            raise NacError(f"{where}: precompiled_charsmap holds a replacement that is not UTF-8") from None

    rules: dict[str, str] = {}
    labels = units & ((1 << 31) | 0xFF)
    offsets = (units >> 10) << ((units & (1 << 9)) >> 6)
    has_leaf = ((units >> 8) & 1).astype(bool)
    byte = np.arange(1, 256)
    frontier, keys = np.array([offsets[0]]), [b""]  # trie positions after each key so far
    visited = 0
    for depth in range(64):  # breadth first, one numpy step per key length
        if frontier.size == 0:
            break
        child = frontier[:, None] ^ byte[None, :]
        inside = child < units.size
        hit = np.zeros(child.shape, bool)
        hit[inside] = labels[child[inside]] == np.broadcast_to(byte, child.shape)[inside]
        rows, cols = np.nonzero(hit)
        visited += rows.size
        if visited > 4 * MAX_RULES:
            raise NacError(f"{where}: precompiled_charsmap's trie is larger than allowed")
        nodes = child[rows, cols]
        nxt = nodes ^ offsets[nodes]
        if (nxt >= units.size).any():
            raise NacError(f"{where}: precompiled_charsmap's trie points outside itself")
        new_keys = [keys[r] + bytes([int(c) + 1]) for r, c in zip(rows.tolist(), cols.tolist())]
        for k, node, pos in zip(new_keys, nodes.tolist(), nxt.tolist()):
            if not has_leaf[node]:
                continue
            try:
                text = k.decode("utf-8")
            except UnicodeDecodeError:
                raise NacError(f"{where}: precompiled_charsmap has a rule for a partial character ({k!r}); "
                               f"TISA supports rules on whole characters") from None
            rules[text] = replacement(int(units[pos]) & ((1 << 31) - 1))
        frontier, keys = nxt, new_keys
    return rules


def rule_tables(rules: dict[str, str]) -> dict[str, np.ndarray]:
    """The TISA tables of a rule set: keys and replacements as int32 code points with int64
    offsets (``keys``, ``keys_off``, ``values``, ``values_off``), keys sorted."""
    keys = sorted(rules)
    out = {}
    for name, texts in (("keys", keys), ("values", [rules[k] for k in keys])):
        cps = [np.array([ord(c) for c in t], np.int32) for t in texts]
        out[name] = np.concatenate(cps) if cps else np.zeros(0, np.int32)
        out[name + "_off"] = np.concatenate([[0], np.cumsum([len(c) for c in cps])]).astype(np.int64)
    return out


def charsmap_of(tables: dict[str, np.ndarray], name: str) -> "Charsmap":
    """The `Charsmap` of a program's (validated) tables ``{name}_keys``, ``_keys_off``, ``_values``,
    ``_values_off``: the inverse of `rule_tables`."""
    k, ko, v, vo = (tables[f"{name}_{t}"].tolist() for t in ("keys", "keys_off", "values", "values_off"))
    return Charsmap({"".join(map(chr, k[ko[i]:ko[i + 1]])): "".join(map(chr, v[vo[i]:vo[i + 1]]))
                     for i in range(len(ko) - 1)})


class Charsmap:
    """The rules as the VM applies them (see the module docstring): ``normalize(text)`` and
    ``transformations(chars)`` (the ``(char, change)`` list `NormalizedString::transform`
    takes, for offsets)."""

    def __init__(self, rules: dict[str, str]):
        import regex

        self.rules = rules
        self.longest = max(map(len, rules), default=0)
        starts = sorted({k[0] for k in rules})  # a character no key starts with is never touched
        self._touch = regex.compile("[" + "".join(regex.escape(c) for c in starts) + "]") if starts else None
        self._grapheme = regex.compile(r"\X", regex.DOTALL)

    def transform(self, chunk: str) -> str | None:
        """The replacement under the shortest rule whose key is a prefix of ``chunk``, or None."""
        for n in range(1, min(len(chunk), self.longest) + 1):
            r = self.rules.get(chunk[:n])
            if r is not None:
                return r
        return None

    def normalize(self, text: str) -> str:
        if self._touch is None or not self._touch.search(text):
            return text
        out = []
        for g in self._grapheme.findall(text):
            if not self._touch.search(g):
                out.append(g)
                continue
            if len(g.encode("utf-8")) < 6:
                r = self.transform(g)
                if r is not None:
                    out.append(r)
                    continue
            for c in g:
                r = self.rules.get(c)
                out.append(c if r is None else r)
        return "".join(out)

    def transformations(self, text: str) -> list[tuple[str, int]]:
        """``normalizers::Precompiled::normalize``'s transformation list for ``text``."""
        out: list[tuple[str, int]] = []

        def replace(old: str, new: str) -> None:
            diff = len(new) - len(old)
            out.extend((c, 0) for c in new)
            if diff > 0:
                for k in range(len(out) - diff, len(out)):
                    out[k] = (out[k][0], 1)
            elif diff < 0 and out:
                out[-1] = (out[-1][0], out[-1][1] + diff)

        for g in self._grapheme.findall(text):
            if len(g.encode("utf-8")) < 6:
                r = self.transform(g)
                if r is not None:
                    replace(g, r)
                    continue
            for c in g:
                r = self.rules.get(c)
                if r is not None:
                    replace(c, r)
                else:
                    out.append((c, 0))
        return out
