"""TISA: Hugging Face tokenizers compiled to bytecode, and the VM that runs them.

``compile_tokenizer(tokenizer.json) -> Program``; ``Program.to_bytes()`` is what a ``.nac`` file's
tokenizer section holds; ``Tokenizer(Program.from_bytes(...))`` encodes and decodes exactly as
Hugging Face ``tokenizers`` does, without importing it.
"""
from nac.tokenizer_vm.program import FORMAT, Program
from nac.tokenizer_vm.vm import Encoding, Tokenizer


def compile_tokenizer(source, name: str = "") -> Program:
    """Compile a Hugging Face ``tokenizer.json`` to a TISA :class:`Program` (see
    :func:`nac.tokenizer_vm.compiler.compile_tokenizer`; imported on use, so loading a compiled
    program stays light)."""
    from nac.tokenizer_vm.compiler import compile_tokenizer as _compile

    return _compile(source, name)


def load_tokenizer(blob: bytes, fmt: str, where: str = "tokenizer section") -> Tokenizer:
    """A :class:`Tokenizer` from a ``.nac`` tokenizer section of format ``fmt`` (``tisa-1``, or
    ``hf-tokenizer-json`` from files written before TISA: compiled on load).

    Raises:
        NacFormatError: a malformed program; NacError: an unknown format or unsupported tokenizer.
    """
    from nac.errors import NacError

    if fmt == FORMAT:
        return Tokenizer(Program.from_bytes(blob, where))
    if fmt == "hf-tokenizer-json":
        return Tokenizer(compile_tokenizer(bytes(blob), name=where))
    raise NacError(f"{where}: tokenizer format {fmt!r} is not supported (expected {FORMAT!r})")


#: The text a tokenizer's fingerprint is taken on (llama.cpp's converter checks its tokenizers on
#: such a string): ASCII words, contractions, digits, whitespace runs, punctuation, accents,
#: combining marks, CJK, Thai, Arabic, emoji, a control character, special-token look-alikes.
FINGERPRINT_TEXT = ("Hello world! It's 2026-12-01; 3.14159 x 42 = 131.946... \t\n  \n\n   spaces   "
                    "déjà vu naïve CAFÉ e\u0301 ﬁ ½ ① 中文字符 日本語のテキスト 한국어 สวัสดี مرحبا 🤖👍🏽 "
                    "\u200b\u00a0\x07 <s> </s> [CLS] [MASK] <|endoftext|> <unk> ▁▁ ### @@ ~~ -- ==")
FINGERPRINT_VERSION = 1


def fingerprint(tok: Tokenizer) -> dict:
    """``{"version", "ids"}``: the ids ``tok`` gives `FINGERPRINT_TEXT` (special tokens added)."""
    return {"version": FINGERPRINT_VERSION, "ids": tok.encode(FINGERPRINT_TEXT).ids}


def check_fingerprint(tok: Tokenizer, recorded, where: str) -> None:
    """Compare ``tok`` with the fingerprint recorded at export.

    Raises:
        NacFormatError: the ids differ (a tokenizer section swapped or damaged, or a VM that no
            longer reproduces it); the message gives the first differing position.
    """
    from nac.errors import NacFormatError

    if not isinstance(recorded, dict) or recorded.get("version") != FINGERPRINT_VERSION:
        return  # another fingerprint text version: nothing to compare against
    got, want = fingerprint(tok)["ids"], recorded.get("ids") or []
    if got != want:
        k = _first_difference(got, want)
        raise NacFormatError(f"{where}: the tokenizer does not reproduce the fingerprint recorded at export "
                             f"(first difference at token {k}: {got[k:k + 3]} here, {want[k:k + 3]} recorded)")


def _first_difference(a: list, b: list) -> int:
    """The first index where two id lists differ (the shorter length if one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _reference_ids(source) -> list[int] | None:
    """The ids Hugging Face ``tokenizers`` gives `FINGERPRINT_TEXT` for a tokenizer.json source,
    or None when that package or the source form is not available."""
    import importlib.util
    import json
    from pathlib import Path

    if importlib.util.find_spec("tokenizers") is None:
        return None
    from tokenizers import Tokenizer as HF

    try:
        if isinstance(source, dict):
            ref = HF.from_str(json.dumps(source))
        elif isinstance(source, (bytes, bytearray)):
            ref = HF.from_str(bytes(source).decode("utf-8"))
        elif isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
            ref = HF.from_file(str(source))
        elif isinstance(source, str):
            ref = HF.from_str(source)
        else:
            return None
    except Exception:  # the compiler already accepted it; a reference that cannot load is no check
        return None
    return ref.encode(FINGERPRINT_TEXT).ids


def tokenizer_section(tokenizer) -> tuple[bytes, dict]:
    """What a ``.nac`` file stores for ``tokenizer``: ``(TISA program bytes, metadata)``.

    ``tokenizer`` is a path to a ``tokenizer.json``, its bytes or text, the parsed dict, a
    :class:`Program`, or a :class:`Tokenizer`. The metadata is ``{"format": "tisa-1", "model":
    ..., "vocab_size": ...}`` (it goes under the file's ``metadata["tokenizer"]``).

    Raises:
        NacError: the file is missing, malformed or uses an unsupported component.
    """
    from pathlib import Path

    source = tokenizer
    if isinstance(tokenizer, Tokenizer):
        tokenizer = tokenizer.program
    if not isinstance(tokenizer, Program):
        tokenizer = compile_tokenizer(Path(tokenizer) if isinstance(tokenizer, Path) else tokenizer)
    model = next((i["op"].split(".")[1] for i in tokenizer.code if i["op"].startswith("MODEL.")), "")
    size = int(tokenizer.tables["vocab_off"].size - 1)
    blob = tokenizer.to_bytes()
    fp = fingerprint(Tokenizer(Program.from_bytes(blob, "compiled tokenizer")))
    ref = _reference_ids(source) if not isinstance(source, (Program, Tokenizer)) else None
    if ref is not None and ref != fp["ids"]:
        from nac.errors import NacError

        k = _first_difference(fp["ids"], ref)
        raise NacError(f"the compiled tokenizer disagrees with Hugging Face tokenizers on the fingerprint text "
                       f"(token {k}: {fp['ids'][k:k + 3]} against {ref[k:k + 3]}); refusing to store it")
    return blob, {"format": FORMAT, "model": model.lower(), "vocab_size": size, "fingerprint": fp}


__all__ = ["compile_tokenizer", "Program", "Tokenizer", "Encoding", "load_tokenizer", "tokenizer_section", "FORMAT",
           "fingerprint", "check_fingerprint", "FINGERPRINT_TEXT"]
