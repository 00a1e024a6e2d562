"""Build ``tests/data/corpus.jsonl.xz``: the real-text corpus of the tokenizer parity tests.

Run once (``python tests/data/make_corpus.py``) on a Debian machine; the result is committed, so
tests never depend on what a machine has installed. One JSON string per line (so a "line" may
hold CR, LF or tabs). Seeded, so a rebuild gives the same file. Sources:

- gettext catalogs under ``/usr/share/locale`` (translated user-interface strings of the Debian
  packages on the machine, msgid and msgstr): prose in ~150 languages and many scripts
  (Latin with diacritics, Cyrillic, Greek, CJK, Arabic, Hebrew, Devanagari, Thai, Georgian…);
- Python's standard-library sources: code;
- ``pydoc_data.topics``: English prose (the Python reference documentation);
- lines derived from those: unusual whitespace (tabs, NBSP, ideographic and thin spaces, runs
  of spaces, CR/LF), emoji with skin tones, ZWJ sequences, flags and keycaps, decomposed
  (NFD) text and stacked combining marks, and very long words (up to 3,000 characters).
"""
from __future__ import annotations

import gettext
import glob
import json
import lzma
import random
import sysconfig
import unicodedata
from pathlib import Path

OUT = Path(__file__).with_name("corpus.jsonl.xz")
rng = random.Random(20261123)


def catalog_lines(limit: int) -> list[str]:
    by_lang: dict[str, list[str]] = {}
    for f in sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES/*.mo")):
        lang = f.split("/")[4]
        try:
            cat = gettext.GNUTranslations(open(f, "rb"))._catalog
        except Exception:
            continue
        for k, v in cat.items():
            for s in (k if isinstance(k, str) else k[0], v):
                if isinstance(s, str) and 3 <= len(s) <= 2000 and "\x00" not in s:
                    by_lang.setdefault(lang, []).append(s)
    out: list[str] = []
    langs = sorted(by_lang)
    per = limit // len(langs)
    for lang in langs:  # every language gets its share, rare scripts included
        pool = sorted(set(by_lang[lang]))
        out += rng.sample(pool, min(per, len(pool)))
    rest = sorted({s for v in by_lang.values() for s in v} - set(out))
    out += rng.sample(rest, max(0, limit - len(out)))
    return out


def code_lines(limit: int) -> list[str]:
    lines = []
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        lines += [ln for ln in f.read_text("utf-8", "replace").splitlines() if ln.strip()]
    return rng.sample(lines, min(limit, len(lines)))


def prose_lines(limit: int) -> list[str]:
    from pydoc_data.topics import topics
    paras = [p.strip() for t in topics.values() for p in t.split("\n\n") if len(p.strip()) > 20]
    return rng.sample(paras, min(limit, len(paras)))


SPACES = ["\t", "\u00a0", "  ", "    ", "\r\n", "\n", "\r", "\u3000", "\u2009", "\u202f", "\u2028", "\t\t", " \n ",
          "\u200b", "\ufeff", "\x0b", "\x0c", "\u0085"]


def whitespace_variants(src: list[str], n: int) -> list[str]:
    out = []
    for s in rng.sample(src, n):
        words = s.split(" ")
        s = "".join(w + (rng.choice(SPACES) if rng.random() < 0.4 else " ") for w in words)
        if rng.random() < 0.3:
            s = rng.choice(SPACES) * rng.randint(1, 5) + s
        if rng.random() < 0.3:
            s = s + rng.choice(SPACES) * rng.randint(1, 5)
        out.append(s)
    return out


EMOJI = [chr(c) for c in list(range(0x1F600, 0x1F650)) + list(range(0x1F300, 0x1F5FF, 7)) + list(range(0x1F900, 0x1F9FF, 5))]
ZWJ = ["👨\u200d👩\u200d👧\u200d👦", "👩🏽\u200d💻", "🏳️\u200d🌈", "🧑🏿\u200d🤝\u200d🧑🏻", "❤️\u200d🔥", "👁️\u200d🗨️",
       "🐻\u200d❄️", "👩\u200d❤️\u200d💋\u200d👨", "🏴\u200d☠️", "🧔🏾\u200d♀️"]
FLAGS = ["🇫🇷", "🇯🇵", "🇧🇷", "🇮🇳", "🇺🇦", "🇬🇷", "🇪🇬", "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"]
KEYCAPS = ["1️⃣", "#️⃣", "*️⃣", "🔟", "©️", "™️", "↔️"]
TONES = [chr(c) for c in range(0x1F3FB, 0x1F400)]


def emoji_lines(src: list[str], n: int) -> list[str]:
    out = []
    for s in rng.sample(src, n):
        words = s.split(" ")
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            e = rng.choice(ZWJ) if kind < 0.3 else rng.choice(FLAGS) if kind < 0.45 else rng.choice(KEYCAPS) \
                if kind < 0.55 else rng.choice(["👍", "👋", "🙏", "💪"]) + rng.choice(TONES) if kind < 0.7 else rng.choice(EMOJI)
            pos = rng.randint(0, len(words))
            words.insert(pos, e if rng.random() < 0.5 else e * rng.randint(2, 4))
        out.append((" " if rng.random() < 0.7 else "").join(words))
    return out


COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u20dd", "\u0489", "\u1ab0", "\u0f71", "\u093c"]


def combining_lines(src: list[str], n: int) -> list[str]:
    out = []
    for s in rng.sample(src, n):
        r = rng.random()
        if r < 0.4:
            out.append(unicodedata.normalize("NFD", s))
        elif r < 0.6:
            out.append(unicodedata.normalize("NFKD", s))
        else:
            out.append("".join(c + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 6)))
                               if c.isalpha() and rng.random() < 0.3 else c for c in s))
    return out


def long_words(src: list[str], n: int) -> list[str]:
    words = [w for s in src for w in s.split() if len(w) > 3]
    out = []
    for i in range(n):
        kind = i % 6
        size = rng.choice([120, 200, 400, 800, 1500, 3000])
        if kind == 0:
            w = "".join(rng.sample(words, 40))
        elif kind == 1:
            w = "https://example.org/" + "/".join(rng.sample(words, 30)) + "?q=" + "".join(rng.choice("abcdef0123456789") for _ in range(64))
        elif kind == 2:
            w = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(size))
        elif kind == 3:
            w = rng.choice(["Donaudampfschifffahrts", "anti", "pneumono", "Rindfleisch", "переподготов", "απο"]) * (size // 10)
        elif kind == 4:
            w = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(size // 3))
        else:
            w = rng.choice("ab-_.=*!?") * size
        out.append(" ".join(rng.sample(words, 3)) + " " + w[:3000] + " " + rng.choice(words))
    return out


def main() -> None:
    cat = catalog_lines(70000)
    code = code_lines(18000)
    prose = prose_lines(6000)
    base = cat + prose
    lines = cat + code + prose + whitespace_variants(base + code, 6000) + emoji_lines(base, 3000) \
        + combining_lines(base, 2500) + long_words(base, 1200)
    lines = [s for s in lines if s]
    rng.shuffle(lines)
    with lzma.open(OUT, "wt", encoding="utf-8", preset=9) as f:
        for s in lines:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    print(f"{len(lines)} lines, {sum(len(s.encode()) for s in lines) / 1e6:.1f} MB of UTF-8 -> {OUT} "
          f"({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
