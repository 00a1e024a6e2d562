"""The TISA virtual machine's hot loops, compiled by Numba.

Every kernel works on a whole batch at once: the text of all segments is one ``int32`` array of
code points (or of byte values 0..255 after the byte-level step), and the words are half-open
ranges ``[starts[i], ends[i])`` into it. A pre-tokeniser maps words to new words; a model maps
words to token ids plus a count per word. Nothing here allocates per word.

Vocabulary lookups use one open-addressing hash table per program: FNV-1a over the code points
of ``prefix + text[s:e] + suffix``, probed linearly, every hit confirmed by comparing the key.
"""
from __future__ import annotations

import numpy as np
from numba import njit

FNV_OFFSET = np.uint64(14695981039346656037)
FNV_PRIME = np.uint64(1099511628211)

# split kinds
SPLIT_CLASS, SPLIT_LITERAL, SPLIT_GPT2, SPLIT_WORDS = 0, 1, 2, 3
# delimiter behaviours, as Hugging Face names them
BEHAVIOURS = {"removed": 0, "isolated": 1, "merged_with_previous": 2, "merged_with_next": 3, "contiguous": 4}
# word rewrites
REWRITE_PREFIX_SPACE, REWRITE_METASPACE, REWRITE_UTF8 = 0, 1, 2

_WS, _LETTER, _NUMBER, _WORD = 1, 64, 128, 256


@njit(cache=True, nogil=True)
def char_class(c, index, blocks):
    if c < 0 or c > 0x10FFFF:
        return 0
    return blocks[np.int64(index[c >> 8]) * 256 + (c & 255)]


@njit(cache=True, nogil=True)
def fnv(h, v):
    return (h ^ np.uint64(np.uint32(v))) * FNV_PRIME


@njit(cache=True, nogil=True)
def probe(h, keys, koff, kid, htab, pre, seq, s, e, suf):
    """The id of the vocabulary entry ``pre + seq[s:e] + suf`` whose FNV-1a hash is ``h``, or -1."""
    n = pre.size + (e - s) + suf.size
    mask = htab.size - 1
    slot = np.int64(h & np.uint64(mask))
    while True:
        t = htab[slot]
        if t < 0:
            return -1
        a = koff[t]
        if koff[t + 1] - a == n:
            same = True
            k = a
            for i in range(pre.size):
                if keys[k] != pre[i]:
                    same = False
                    break
                k += 1
            if same:
                for i in range(s, e):
                    if keys[k] != seq[i]:
                        same = False
                        break
                    k += 1
            if same:
                for i in range(suf.size):
                    if keys[k] != suf[i]:
                        same = False
                        break
                    k += 1
            if same:
                return kid[t]
        slot = (slot + 1) & mask


@njit(cache=True, nogil=True)
def lookup(keys, koff, kid, htab, pre, seq, s, e, suf):
    """``probe`` with the hash computed here."""
    h = FNV_OFFSET
    for i in range(pre.size):
        h = fnv(h, pre[i])
    for i in range(s, e):
        h = fnv(h, seq[i])
    for i in range(suf.size):
        h = fnv(h, suf[i])
    return probe(h, keys, koff, kid, htab, pre, seq, s, e, suf)


@njit(cache=True, nogil=True)
def build_hash(keys, koff):
    """An open-addressing table (power-of-two size, load ≤ 0.5) over entries ``keys[koff[i]:
    koff[i+1]]``; a later entry with the same key replaces the earlier one."""
    n = koff.size - 1
    size = 16
    while size < 2 * n + 2:
        size *= 2
    htab = np.full(size, -1, np.int32)
    mask = size - 1
    for t in range(n):
        h = FNV_OFFSET
        for i in range(koff[t], koff[t + 1]):
            h = fnv(h, keys[i])
        slot = np.int64(h & np.uint64(mask))
        while True:
            u = htab[slot]
            if u < 0:
                htab[slot] = t
                break
            if koff[u + 1] - koff[u] == koff[t + 1] - koff[t]:
                same = True
                for i in range(koff[t + 1] - koff[t]):
                    if keys[koff[u] + i] != keys[koff[t] + i]:
                        same = False
                        break
                if same:
                    htab[slot] = t
                    break
            slot = (slot + 1) & mask
    return htab


# -- pre-tokenisation ----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _gpt2_end(cps, i, e, index, blocks):
    """End of the GPT-2 pattern's match at ``i``:
    ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``."""
    c = cps[i]
    if c == 39 and i + 1 < e:
        c1 = cps[i + 1]
        if c1 == 115 or c1 == 116 or c1 == 109 or c1 == 100:
            return i + 2
        if i + 2 < e:
            c2 = cps[i + 2]
            if (c1 == 114 and c2 == 101) or (c1 == 118 and c2 == 101) or (c1 == 108 and c2 == 108):
                return i + 3
    j = i
    if c == 32 and i + 1 < e:
        j = i + 1
    k = char_class(cps[j], index, blocks)
    if (k & _WS) == 0 or j == i:
        if k & _LETTER:
            want = _LETTER
        elif k & _NUMBER:
            want = _NUMBER
        elif (k & _WS) == 0:
            want = 0
        else:
            want = -1
        if want > 0:
            j += 1
            while j < e and (char_class(cps[j], index, blocks) & want):
                j += 1
            return j
        if want == 0:
            j += 1
            while j < e and (char_class(cps[j], index, blocks) & (_WS | _LETTER | _NUMBER)) == 0:
                j += 1
            return j
    # whitespace run starting at i
    j = i
    while j < e and (char_class(cps[j], index, blocks) & _WS):
        j += 1
    if j == e or j - 1 == i:
        return j
    return j - 1


@njit(cache=True, nogil=True)
def _events(cps, s, e, kind, index, blocks, mask, lit, es, ee, em):
    """The pattern's matches inside ``[s, e)`` as events (start, end, is_match) covering it."""
    n = 0
    last = s
    if kind == 0:  # every character of the class is its own match
        for i in range(s, e):
            if char_class(cps[i], index, blocks) & mask:
                if last < i:
                    es[n] = last
                    ee[n] = i
                    em[n] = False
                    n += 1
                es[n] = i
                ee[n] = i + 1
                em[n] = True
                n += 1
                last = i + 1
    elif kind == 1:  # non-overlapping occurrences of a literal
        m = lit.size
        i = s
        while m > 0 and i + m <= e:
            same = True
            for k in range(m):
                if cps[i + k] != lit[k]:
                    same = False
                    break
            if same:
                if last < i:
                    es[n] = last
                    ee[n] = i
                    em[n] = False
                    n += 1
                es[n] = i
                ee[n] = i + m
                em[n] = True
                n += 1
                i += m
                last = i
            else:
                i += 1
    elif kind == 2:  # the GPT-2 pattern matches everywhere
        i = s
        while i < e:
            j = _gpt2_end(cps, i, e, index, blocks)
            es[n] = i
            ee[n] = j
            em[n] = True
            n += 1
            i = j
        last = e
    else:  # \w+|[^\w\s]+
        i = s
        while i < e:
            k = char_class(cps[i], index, blocks)
            if k & _WS and not (k & _WORD):
                i += 1
                continue
            j = i + 1
            if k & _WORD:
                while j < e and (char_class(cps[j], index, blocks) & _WORD):
                    j += 1
            else:
                while j < e and (char_class(cps[j], index, blocks) & (_WORD | _WS)) == 0:
                    j += 1
            if last < i:
                es[n] = last
                ee[n] = i
                em[n] = False
                n += 1
            es[n] = i
            ee[n] = j
            em[n] = True
            n += 1
            last = j
            i = j
    if last < e:
        es[n] = last
        ee[n] = e
        em[n] = False
        n += 1
    return n


@njit(cache=True, nogil=True)
def split_words(cps, starts, ends, first, kind, index, blocks, mask, lit, behaviour, invert):
    """Split every word by a pattern with a Hugging Face ``SplitDelimiterBehavior``.

    Returns ``(starts, ends, first, source)``: the new words (empty ones dropped), whether each
    starts at offset 0 of the original text, and the index of the word it came from.
    """
    total = 0
    for w in range(starts.size):
        total += 2 * (ends[w] - starts[w]) + 1
    ns = np.empty(total, np.int64)
    ne = np.empty(total, np.int64)
    nf = np.empty(total, np.bool_)
    src = np.empty(total, np.int64)
    cap = 0
    for w in range(starts.size):
        cap = max(cap, 2 * (ends[w] - starts[w]) + 1)
    es = np.empty(cap, np.int64)
    ee = np.empty(cap, np.int64)
    em = np.empty(cap, np.bool_)
    ps = np.empty(cap, np.int64)
    pe = np.empty(cap, np.int64)
    pr = np.empty(cap, np.bool_)
    out = 0
    for w in range(starts.size):
        s, e = starts[w], ends[w]
        n = _events(cps, s, e, kind, index, blocks, mask, lit, es, ee, em)
        if invert:
            for i in range(n):
                em[i] = not em[i]
        p = 0
        if behaviour <= 1:  # 0 removed (matches dropped), 1 isolated (every event a piece)
            for i in range(n):
                ps[p] = es[i]
                pe[p] = ee[i]
                pr[p] = em[i] and behaviour == 0
                p += 1
        else:  # 2 merged with previous, 4 contiguous: fold left to right; 3 merged with next: right to left
            prev = False
            for j in range(n):
                i = n - 1 - j if behaviour == 3 else j
                merge = (em[i] == prev) if behaviour == 4 else (em[i] and not prev)
                if merge and p > 0:
                    if behaviour == 3:
                        ps[p - 1] = es[i]
                    else:
                        pe[p - 1] = ee[i]
                else:
                    ps[p] = es[i]
                    pe[p] = ee[i]
                    pr[p] = False
                    p += 1
                prev = em[i]
            if behaviour == 3:
                for i in range(p // 2):
                    a, b = ps[i], pe[i]
                    ps[i], pe[i] = ps[p - 1 - i], pe[p - 1 - i]
                    ps[p - 1 - i], pe[p - 1 - i] = a, b
        for i in range(p):
            if not pr[i] and pe[i] > ps[i]:
                ns[out] = ps[i]
                ne[out] = pe[i]
                nf[out] = first[w] and ps[i] == s
                src[out] = w
                out += 1
    return ns[:out], ne[:out], nf[:out], src[:out]


@njit(cache=True, nogil=True)
def rewrite_words(cps, starts, ends, first, op, a, b):
    """Rewrite every word into a new code-point buffer.

    ``op`` 0: prepend a space unless the word starts with one (ByteLevel ``add_prefix_space``);
    1: replace spaces by the code point ``a`` and prepend ``a`` (``b``: 0 never, 1 always,
    2 only to the word at offset 0) unless the word starts with it (Metaspace);
    2: encode as UTF-8, one byte value per element (ByteLevel).
    Returns ``(cps, starts, ends)``.
    """
    total = 0
    for w in range(starts.size):
        total += (ends[w] - starts[w]) * (4 if op == 2 else 1) + 1
    out = np.empty(total, np.int32)
    ns = np.empty(starts.size, np.int64)
    ne = np.empty(starts.size, np.int64)
    k = 0
    for w in range(starts.size):
        s, e = starts[w], ends[w]
        ns[w] = k
        if op == 0:
            if e == s or cps[s] != 32:
                out[k] = 32
                k += 1
            for i in range(s, e):
                out[k] = cps[i]
                k += 1
        elif op == 1:
            starts_with = e > s and (cps[s] == 32 or cps[s] == a)
            if not starts_with and (b == 1 or (b == 2 and first[w])):
                out[k] = a
                k += 1
            for i in range(s, e):
                out[k] = a if cps[i] == 32 else cps[i]
                k += 1
        else:
            for i in range(s, e):
                k = _utf8(cps[i], out, k)
        ne[w] = k
    return out[:k], ns, ne


@njit(cache=True, nogil=True)
def _utf8(c, out, k):
    if c < 0x80:
        out[k] = c
        return k + 1
    if c < 0x800:
        out[k] = 0xC0 | (c >> 6)
        out[k + 1] = 0x80 | (c & 0x3F)
        return k + 2
    if c < 0x10000:
        out[k] = 0xE0 | (c >> 12)
        out[k + 1] = 0x80 | ((c >> 6) & 0x3F)
        out[k + 2] = 0x80 | (c & 0x3F)
        return k + 3
    out[k] = 0xF0 | (c >> 18)
    out[k + 1] = 0x80 | ((c >> 12) & 0x3F)
    out[k + 2] = 0x80 | ((c >> 6) & 0x3F)
    out[k + 3] = 0x80 | (c & 0x3F)
    return k + 4


@njit(cache=True, nogil=True)
def _byte_fallback(seq, s, e, pre, suf, byte_ids, byte_mode, out, k):
    """Append the ``<0xXX>`` ids of the UTF-8 bytes of ``pre + seq[s:e] + suf``; -1 if one is
    missing (then nothing counts)."""
    buf = np.empty(4 * (pre.size + e - s + suf.size), np.int32)
    n = 0
    for i in range(pre.size):
        n = _utf8(pre[i], buf, n)
    for i in range(s, e):
        if byte_mode:
            buf[n] = seq[i]
            n += 1
        else:
            n = _utf8(seq[i], buf, n)
    for i in range(suf.size):
        n = _utf8(suf[i], buf, n)
    for i in range(n):
        if byte_ids[buf[i]] < 0:
            return -1
    for i in range(n):
        out[k + i] = byte_ids[buf[i]]
    return k + n


# -- the word cache -------------------------------------------------------------------------------
#: a cached word has at most CACHE_WORD code points and CACHE_IDS ids
CACHE_WORD = CACHE_IDS = 16
#: one row per slot: [word length (-1: empty), number of ids, code points..., ids...]
CACHE_ROW = 2 + CACHE_WORD + CACHE_IDS
#: the default number of slots (words)
CACHE_SLOTS = 8192


def word_cache(slots: int = CACHE_SLOTS) -> np.ndarray:
    """An empty word cache for `bpe`: ``int32[slots, CACHE_ROW]``, ``slots`` a power
    of two (0: no cache). Text repeats its words, and a model's ids for a word depend on the word
    alone, so `bpe` keeps each word's ids (Hugging Face ``tokenizers``' BPE model keeps a word
    cache for the same reason). It is direct-mapped: a word replaces the one in its
    slot. A cache belongs to one thread at a time (`Tokenizer` keeps one per thread).

    Raises:
        ValueError: ``slots`` is not 0 or a power of two.
    """
    if slots < 0 or slots & (slots - 1):
        raise ValueError(f"word cache slots must be 0 or a power of two, not {slots}")
    return np.full((slots, CACHE_ROW), -1, np.int32)


@njit(cache=True, nogil=True)
def _cache_slot(cache, cps, s, e):
    """The slot of word ``cps[s:e]``, or -1 when there is no cache or the word is too long for it."""
    if cache.shape[0] == 0 or e - s > CACHE_WORD:
        return -1
    h = FNV_OFFSET
    for i in range(s, e):
        h = fnv(h, cps[i])
    return np.int64(h & np.uint64(cache.shape[0] - 1))


@njit(cache=True, nogil=True)
def _cache_get(cache, slot, cps, s, e, ids, k):
    """Copy the cached ids of ``cps[s:e]`` to ``ids[k:]``; the new end, or -1 if it is not cached."""
    row = cache[slot]
    if row[0] != e - s:
        return -1
    for i in range(e - s):
        if row[2 + i] != cps[s + i]:
            return -1
    n = row[1]
    for j in range(n):
        ids[k + j] = row[2 + CACHE_WORD + j]
    return k + n


@njit(cache=True, nogil=True)
def _cache_put(cache, slot, cps, s, e, ids, k0, k):
    """Keep ``ids[k0:k]`` as the ids of ``cps[s:e]`` (if they fit)."""
    if k - k0 > CACHE_IDS:
        return
    row = cache[slot]
    for i in range(e - s):
        row[2 + i] = cps[s + i]
    for j in range(k - k0):
        row[2 + CACHE_WORD + j] = ids[k0 + j]
    row[1] = k - k0
    row[0] = e - s


# -- models --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def wordpiece(cps, starts, ends, keys, koff, kid, htab, prefix, max_chars, unk, longest):
    """WordPiece greedy longest-match-first (Hugging Face ``models::wordpiece``): a word longer
    than ``max_chars`` code points, or one with a piece not in the vocabulary, becomes ``unk``.
    ``longest``: the longest vocabulary key, in code points (no longer piece is tried). Each piece
    hashes its candidate ends in one pass from its start (FNV-1a runs left to right), then probes
    them longest first, so a word costs O(n * longest) hash steps, not O(n^3). (No word cache:
    measured on the corpus, looking a word up in it cost more than these probes.) Returns ``(ids
    int32[], counts int64[words])``."""
    empty = np.empty(0, np.int32)
    total = 0
    for w in range(starts.size):
        total += ends[w] - starts[w] + 1
    ids = np.empty(total, np.int32)
    counts = np.zeros(starts.size, np.int64)
    hs = np.empty(max(longest, 1), np.uint64)  # hs[j]: the hash of prefix + cps[start:start + j + 1]
    k = 0
    for w in range(starts.size):
        s, e = starts[w], ends[w]
        if e - s > max_chars:
            ids[k] = unk
            k += 1
            counts[w] = 1
            continue
        k0 = k
        start = s
        bad = False
        while start < e:
            pre = prefix if start > s else empty
            end = min(e, start + longest - pre.size)
            h = FNV_OFFSET
            for i in range(pre.size):
                h = fnv(h, pre[i])
            for i in range(start, end):
                h = fnv(h, cps[i])
                hs[i - start] = h
            cur = -1
            while start < end:
                cur = probe(hs[end - start - 1], keys, koff, kid, htab, pre, cps, start, end, empty)
                if cur >= 0:
                    break
                end -= 1
            if cur < 0:
                bad = True
                break
            ids[k] = cur
            k += 1
            start = end
        if bad:
            k = k0
            ids[k] = unk
            k += 1
        counts[w] = k - k0
    return ids[:k], counts


@njit(cache=True, nogil=True)
def _merge_lookup(mkeys, mrank, mnew, left, right):
    key = (np.int64(left) << 32) | np.int64(right)
    mask = mkeys.size - 1
    slot = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)) & mask
    while True:
        t = mkeys[slot]
        if t == -1:
            return -1, -1
        if t == key:
            return mrank[slot], mnew[slot]
        slot = (slot + 1) & mask


def merge_table(pairs: np.ndarray, ranks: np.ndarray, new_ids: np.ndarray):
    """The merge hash table ``(keys int64, rank int32, new int32)`` for ``pairs`` [n, 2] of ids;
    a later pair with the same ids replaces the earlier one (as a Hugging Face map insert)."""
    return _merge_table(np.ascontiguousarray(pairs, np.int64), ranks.astype(np.int32), new_ids.astype(np.int32))


@njit(cache=True, nogil=True)
def _merge_table(pairs, ranks, new_ids):
    size = 16
    while size < 2 * pairs.shape[0] + 2:
        size *= 2
    mkeys = np.full(size, -1, np.int64)
    mrank = np.zeros(size, np.int32)
    mnew = np.zeros(size, np.int32)
    mask = size - 1
    for i in range(pairs.shape[0]):
        key = (pairs[i, 0] << 32) | pairs[i, 1]
        slot = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)) & mask
        while mkeys[slot] != -1 and mkeys[slot] != key:
            slot = (slot + 1) & mask
        mkeys[slot] = key
        mrank[slot] = ranks[i]
        mnew[slot] = new_ids[i]
    return mkeys, mrank, mnew


@njit(cache=True, nogil=True)
def _heap_push(hk, hv, n, key, val):
    i = n
    hk[i] = key
    hv[i] = val
    while i > 0:
        p = (i - 1) >> 1
        if hk[p] <= hk[i]:
            break
        hk[p], hk[i] = hk[i], hk[p]
        hv[p], hv[i] = hv[i], hv[p]
        i = p
    return n + 1


@njit(cache=True, nogil=True)
def _heap_pop(hk, hv, n):
    key, val = hk[0], hv[0]
    n -= 1
    hk[0] = hk[n]
    hv[0] = hv[n]
    i = 0
    while True:
        l = 2 * i + 1
        if l >= n:
            break
        c = l
        if l + 1 < n and hk[l + 1] < hk[l]:
            c = l + 1
        if hk[i] <= hk[c]:
            break
        hk[c], hk[i] = hk[i], hk[c]
        hv[c], hv[i] = hv[i], hv[c]
        i = c
    return key, val, n


@njit(cache=True, nogil=True)
def bpe(cps, starts, ends, keys, koff, kid, htab, mkeys, mrank, mnew, prefix, suffix,
        byte_ids, byte_fallback, unk, fuse_unk, ignore_merges, byte_mode, cache):
    """Byte-pair encoding of every word (Hugging Face ``models::bpe``: initial symbols per
    character with continuing-subword prefix / end-of-word suffix, byte fallback, unknown-token
    fusing, then merges applied lowest rank first, leftmost first among equal ranks).
    ``cache``: a `word_cache` this call may read and fill. Returns ``(ids int32[], counts
    int64[words], error)``; error 1 means an unknown character with no unknown token."""
    empty = np.empty(0, np.int32)
    total = 0
    longest = 0
    for w in range(starts.size):
        n = ends[w] - starts[w]
        total += 4 * (1 + prefix.size + suffix.size) * n + 1 if byte_fallback else n + 1
        longest = max(longest, n)
    ids = np.empty(total, np.int32)
    counts = np.zeros(starts.size, np.int64)
    cap = 4 * (1 + prefix.size + suffix.size) * longest + 4 if byte_fallback else longest + 4
    sym = np.empty(cap, np.int32)
    prv = np.empty(cap, np.int64)
    nxt = np.empty(cap, np.int64)
    alive = np.empty(cap, np.bool_)
    hk = np.empty(4 * cap + 16, np.int64)
    hv = np.empty(4 * cap + 16, np.int32)
    k = 0
    for w in range(starts.size):
        s, e = starts[w], ends[w]
        slot = _cache_slot(cache, cps, s, e)
        if slot >= 0:
            k1 = _cache_get(cache, slot, cps, s, e, ids, k)
            if k1 >= 0:
                counts[w] = k1 - k
                k = k1
                continue
        if ignore_merges:
            t = lookup(keys, koff, kid, htab, empty, cps, s, e, empty)
            if t >= 0:
                ids[k] = t
                k += 1
                counts[w] = 1
                continue
        n = 0
        pending_unk = False
        for i in range(s, e):
            pre = prefix if i > s else empty
            suf = suffix if i == e - 1 else empty
            t = lookup(keys, koff, kid, htab, pre, cps, i, i + 1, suf)
            if t >= 0:
                if pending_unk:
                    sym[n] = unk
                    n += 1
                    pending_unk = False
                sym[n] = t
                n += 1
                continue
            if byte_fallback:
                m = _byte_fallback(cps, i, i + 1, pre, suf, byte_ids, byte_mode, sym, n)
                if m >= 0:
                    n = m
                    continue
            if unk >= 0:
                if pending_unk and not fuse_unk:
                    sym[n] = unk
                    n += 1
                pending_unk = True
        if pending_unk:
            sym[n] = unk
            n += 1
        for i in range(n):
            prv[i] = i - 1
            nxt[i] = i + 1 if i + 1 < n else -1
            alive[i] = True
        hn = 0
        for i in range(n - 1):
            r, t = _merge_lookup(mkeys, mrank, mnew, sym[i], sym[i + 1])
            if r >= 0:
                hn = _heap_push(hk, hv, hn, (np.int64(r) << 32) | i, t)
        while hn > 0:
            key, new, hn = _heap_pop(hk, hv, hn)
            pos = key & 0xFFFFFFFF
            if not alive[pos] or nxt[pos] == -1:
                continue
            right = nxt[pos]
            r, t = _merge_lookup(mkeys, mrank, mnew, sym[pos], sym[right])
            if r < 0 or t != new:
                continue
            sym[pos] = new
            alive[right] = False
            nxt[pos] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = pos
            if prv[pos] >= 0:
                p = prv[pos]
                r, t = _merge_lookup(mkeys, mrank, mnew, sym[p], sym[pos])
                if r >= 0:
                    hn = _heap_push(hk, hv, hn, (np.int64(r) << 32) | p, t)
            if nxt[pos] >= 0:
                r, t = _merge_lookup(mkeys, mrank, mnew, sym[pos], sym[nxt[pos]])
                if r >= 0:
                    hn = _heap_push(hk, hv, hn, (np.int64(r) << 32) | pos, t)
        k0 = k
        for i in range(n):
            if alive[i]:
                ids[k] = sym[i]
                k += 1
        counts[w] = k - k0
        if slot >= 0:
            _cache_put(cache, slot, cps, s, e, ids, k0, k)
    return ids[:k], counts, 0


@njit(cache=True, nogil=True)
def unigram(cps, starts, ends, keys, koff, kid, htab, scores, max_len, unk, unk_score, fuse_unk,
            byte_ids, byte_fallback):
    """Unigram segmentation by Viterbi over each word (Hugging Face ``models::unigram``
    ``encode_optimized``, after SentencePiece): the best-scoring path through vocabulary pieces,
    an unknown single character scoring ``unk_score``; consecutive unknowns fuse when
    ``fuse_unk``; an unknown piece falls back to ``<0xXX>`` byte tokens when ``byte_fallback``.
    Returns ``(ids int32[], counts int64[words], error)``; error 1: an unknown piece and no
    unknown token."""
    empty = np.empty(0, np.int32)
    total = 0
    longest = 0
    for w in range(starts.size):
        total += 4 * (ends[w] - starts[w]) + 1
        longest = max(longest, ends[w] - starts[w])
    ids = np.empty(total, np.int32)
    counts = np.zeros(starts.size, np.int64)
    best = np.empty(longest + 1, np.float64)
    bstart = np.empty(longest + 1, np.int64)
    bid = np.empty(longest + 1, np.int64)
    ps = np.empty(longest + 1, np.int64)
    pe = np.empty(longest + 1, np.int64)
    pid = np.empty(longest + 1, np.int64)
    k = 0
    for w in range(starts.size):
        s, e = starts[w], ends[w]
        n = e - s
        for i in range(n + 1):
            best[i] = 0.0
            bstart[i] = -1
            bid[i] = -1
        for a in range(n):
            here = best[a]
            single = False
            h = FNV_OFFSET
            for ln in range(1, min(max_len, n - a) + 1):
                h = fnv(h, cps[s + a + ln - 1])
                t = probe(h, keys, koff, kid, htab, empty, cps, s + a, s + a + ln, empty)
                if t >= 0:
                    sc = scores[t] + here
                    if bstart[a + ln] < 0 or sc > best[a + ln]:
                        best[a + ln] = sc
                        bstart[a + ln] = a
                        bid[a + ln] = t
                    if ln == 1:
                        single = True
            if not single:
                sc = unk_score + here
                if bstart[a + 1] < 0 or sc > best[a + 1]:
                    best[a + 1] = sc
                    bstart[a + 1] = a
                    bid[a + 1] = -2  # unknown
        # backtrack into pieces, fusing unknowns
        np_ = 0
        end = n
        while end > 0:
            a = bstart[end]
            if fuse_unk and bid[end] == -2 and np_ > 0 and pid[np_ - 1] == -2 and ps[np_ - 1] == end:
                ps[np_ - 1] = a
            else:
                ps[np_] = a
                pe[np_] = end
                pid[np_] = bid[end]
                np_ += 1
            end = a
        k0 = k
        for j in range(np_ - 1, -1, -1):
            if pid[j] >= 0:
                ids[k] = pid[j]
                k += 1
                continue
            t = lookup(keys, koff, kid, htab, empty, cps, s + ps[j], s + pe[j], empty)
            if t >= 0:
                ids[k] = t
                k += 1
                continue
            if byte_fallback:
                m = _byte_fallback(cps, s + ps[j], s + pe[j], empty, empty, byte_ids, False, ids, k)
                if m >= 0:
                    k = m
                    continue
            if unk < 0:
                return ids[:k], counts, 1
            ids[k] = unk
            k += 1
        counts[w] = k - k0
    return ids[:k], counts, 0


# -- the whole encode path in one call ---------------------------------------------------------------
#: the fused pipeline's split step (its rewrite steps are the REWRITE_* codes)
PRE_SPLIT = 3
#: `pre_tokenize`'s step columns
STEP_OP, STEP_KIND, STEP_MASK, STEP_BEHAVIOUR, STEP_INVERT, STEP_LIT, STEP_LIT_END, STEP_A, STEP_B = range(9)
STEP_COLUMNS = 9


@njit(cache=True, nogil=True)
def pre_tokenize(cps, lens, first, steps, lit, index, blocks):
    """Every array pre-tokeniser step of a program, in order, in one call.

    cps: int32 code points of all segments, back to back; lens: int64 length of each segment;
    first: whether each segment starts at offset 0 of its text. ``steps``: int64[steps,
    `STEP_COLUMNS`], one row per step (its arguments in one array, so a call types and unboxes
    one array, not eleven). Step ``k`` is ``steps[k, STEP_OP]``: `PRE_SPLIT` (`split_words` with
    the row's kind, class mask, behaviour, invert flag and the literal ``lit[steps[k,
    STEP_LIT]:steps[k, STEP_LIT_END]]``) or a `rewrite_words` op with operands ``steps[k, STEP_A]``,
    ``steps[k, STEP_B]``. Returns ``(cps, starts, ends, segment)``: the words and the segment each
    came from (empty segments give no word)."""
    n = 0
    for i in range(lens.size):
        n += lens[i] > 0
    starts = np.empty(n, np.int64)
    ends = np.empty(n, np.int64)
    seg = np.empty(n, np.int64)
    wfirst = np.empty(n, np.bool_)
    pos = 0
    w = 0
    for i in range(lens.size):
        if lens[i] > 0:
            starts[w] = pos
            ends[w] = pos + lens[i]
            seg[w] = i
            wfirst[w] = first[i]
            w += 1
        pos += lens[i]
    for k in range(steps.shape[0]):
        row = steps[k]
        if row[STEP_OP] == PRE_SPLIT:
            s, e, f, src = split_words(cps, starts, ends, wfirst, row[STEP_KIND], index, blocks, row[STEP_MASK],
                                       lit[row[STEP_LIT]:row[STEP_LIT_END]], row[STEP_BEHAVIOUR], row[STEP_INVERT] != 0)
            starts, ends, wfirst = s, e, f
            seg = seg[src]
        else:
            c, s, e = rewrite_words(cps, starts, ends, wfirst, row[STEP_OP], row[STEP_A], row[STEP_B])
            cps, starts, ends = c, s, e
    return cps, starts, ends, seg


@njit(cache=True, nogil=True)
def per_segment(counts, seg, nseg):
    """Token counts per word -> per segment (int64[nseg])."""
    out = np.zeros(nseg, np.int64)
    for w in range(counts.size):
        out[seg[w]] += counts[w]
    return out


@njit(cache=True, nogil=True)
def encode_wordpiece(cps, lens, first, steps, lit, index, blocks, keys, koff, kid, htab, prefix, max_chars, unk,
                     longest):
    """`pre_tokenize` (``steps``, ``lit``, ``index``, ``blocks``: its step and class arrays) then
    `wordpiece`, in one call. Returns ``(ids int32[], tokens per segment int64[])``."""
    c, s, e, seg = pre_tokenize(cps, lens, first, steps, lit, index, blocks)
    ids, counts = wordpiece(c, s, e, keys, koff, kid, htab, prefix, max_chars, unk, longest)
    return ids, per_segment(counts, seg, lens.size)


@njit(cache=True, nogil=True)
def encode_bpe(cps, lens, first, steps, lit, index, blocks, cache, keys, koff, kid, htab, mkeys, mrank, mnew, prefix,
               suffix, byte_ids, byte_fallback, unk, fuse_unk, ignore_merges, byte_mode):
    """`pre_tokenize` then `bpe` (with the word cache ``cache``), in one call. Returns ``(ids,
    tokens per segment, error)``."""
    c, s, e, seg = pre_tokenize(cps, lens, first, steps, lit, index, blocks)
    ids, counts, err = bpe(c, s, e, keys, koff, kid, htab, mkeys, mrank, mnew, prefix, suffix, byte_ids,
                           byte_fallback, unk, fuse_unk, ignore_merges, byte_mode, cache)
    return ids, per_segment(counts, seg, lens.size), err


@njit(cache=True, nogil=True)
def encode_unigram(cps, lens, first, steps, lit, index, blocks, keys, koff, kid, htab, scores, max_len, unk,
                   unk_score, fuse_unk, byte_ids, byte_fallback):
    """`pre_tokenize` then `unigram`, in one call. Returns ``(ids, tokens per segment, error)``."""
    c, s, e, seg = pre_tokenize(cps, lens, first, steps, lit, index, blocks)
    ids, counts, err = unigram(c, s, e, keys, koff, kid, htab, scores, max_len, unk, unk_score, fuse_unk, byte_ids,
                               byte_fallback)
    return ids, per_segment(counts, seg, lens.size), err
