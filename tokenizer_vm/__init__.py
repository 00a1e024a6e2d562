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


def tokenizer_section(tokenizer) -> tuple[bytes, dict]:
    """What a ``.nac`` file stores for ``tokenizer``: ``(TISA program bytes, metadata)``.

    ``tokenizer`` is a path to a ``tokenizer.json``, its bytes or text, the parsed dict, a
    :class:`Program`, or a :class:`Tokenizer`. The metadata is ``{"format": "tisa-1", "model":
    ..., "vocab_size": ...}`` (it goes under the file's ``metadata["tokenizer"]``).

    Raises:
        NacError: the file is missing, malformed or uses an unsupported component.
    """
    from pathlib import Path

    if isinstance(tokenizer, Tokenizer):
        tokenizer = tokenizer.program
    if not isinstance(tokenizer, Program):
        tokenizer = compile_tokenizer(Path(tokenizer) if isinstance(tokenizer, Path) else tokenizer)
    model = next((i["op"].split(".")[1] for i in tokenizer.code if i["op"].startswith("MODEL.")), "")
    size = int(tokenizer.tables["vocab_off"].size - 1)
    return tokenizer.to_bytes(), {"format": FORMAT, "model": model.lower(), "vocab_size": size}


__all__ = ["compile_tokenizer", "Program", "Tokenizer", "Encoding", "load_tokenizer", "tokenizer_section", "FORMAT"]
