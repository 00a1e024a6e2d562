"""Fuzzing NAC's readers: seed files, mutators that understand the container, and the targets.

A `.nac` file is checked by CRC-32 before anything parses it, so flipping random bytes mostly
tests the checksum. The mutators here therefore take a file apart (header, section table,
sections; JSON documents; safetensors headers; TISA tables), change one thing the way a bug or an
attacker would (a value of the wrong type, an absurd integer, a deep nesting, a shape that lies,
a table entry out of range, random bytes inside one section), and put it back together with
every CRC recomputed, so the parser behind the checksum is reached.

Targets (each takes the bytes of one input and must end in success or a `nac.NacError`):

- ``reader``: a `.nac` file through `nac.load` (reader, schemas, graph validator, shape
  inference), `nac info`'s summary, then `Model.run` at shapes drawn inside the file's ranges
  (planner, kernels) and the tokenizer if it has one.
- ``tisa``: a TISA program through `Program.from_bytes` (table validation), then `encode` (with
  its offsets) and
  `decode` of text and ids drawn from the input.

``python tests/fuzz/run.py TARGET`` fuzzes one target with atheris; ``make fuzz`` runs them all.
"""
from __future__ import annotations

import json
import math
import random
import struct
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
REGRESSIONS = HERE / "regressions"
TARGETS = ("reader", "tisa")


# ------------------------------------------------------------------------------------------------
# seeds: small valid files covering the op families and the three tokenizer models
# ------------------------------------------------------------------------------------------------
def _graphs():
    from nac.format.graph import Graph, Node

    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.normal(size=shape).astype(np.float32)

    out = []
    # linear + activation + softmax over a dynamic batch
    g = Graph(dims={"batch": {"min": 1, "max": 8}})
    x = g.add_value("x", "float32", ("batch", 4))
    g.inputs.append(x)
    w, b = g.add_param("fc.weight", f32(3, 4)), g.add_param("fc.bias", f32(3))
    h = g.add_value("h", "float32", ("batch", 3))
    g.nodes.append(Node("linear", [x, w, b], [h], {"activation": "relu"}, "fc"))
    y = g.add_value("y", "float32", ("batch", 3))
    g.nodes.append(Node("softmax", [h], [y], {"dim": 1}, "head"))
    g.outputs.append(y)
    out.append(g)
    # conv + pooling + reshape
    g = Graph(dims={"batch": {"min": 1, "max": 4}, "h": {"min": 4, "max": 16}})
    x = g.add_value("x", "float32", ("batch", 2, "h", "h"))
    g.inputs.append(x)
    w, b = g.add_param("conv.weight", f32(4, 2, 3, 3)), g.add_param("conv.bias", f32(4))
    c = g.add_value("c", "float32", ("batch", 4, "h", "h"))
    g.nodes.append(Node("conv2d", [x, w, b], [c], {"stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1],
                                                   "groups": 1, "activation": "silu"}, "conv"))
    p = g.add_value("p", "float32", ("batch", 4, "h // 2", "h // 2"))
    g.nodes.append(Node("max_pool2d", [c], [p], {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                                 "dilation": [1, 1], "ceil_mode": False}, "pool"))
    a = g.add_value("a", "float32", ("batch", 4, 1, 1))
    g.nodes.append(Node("adaptive_avg_pool2d", [p], [a], {"output_size": [1, 1]}, "gap"))
    r = g.add_value("r", "float32", ("batch", 4))
    g.nodes.append(Node("reshape", [a], [r], {"shape": ["batch", 4]}, "flatten"))
    g.outputs.append(r)
    out.append(g)
    # embedding + layer norm + attention + views
    g = Graph(dims={"batch": {"min": 1, "max": 4}, "seq": {"min": 1, "max": 16}})
    ids = g.add_value("ids", "int64", ("batch", "seq"))
    g.inputs.append(ids)
    table = g.add_param("emb.weight", f32(10, 8))
    e = g.add_value("e", "float32", ("batch", "seq", 8))
    g.nodes.append(Node("embedding", [table, ids], [e], {}, "emb"))
    ln = g.add_value("ln", "float32", ("batch", "seq", 8))
    g.nodes.append(Node("layer_norm", [e, g.add_param("ln.weight", f32(8)), g.add_param("ln.bias", f32(8))], [ln],
                        {"axes": 1, "eps": 1e-5}, "ln"))
    q = g.add_value("q", "float32", ("batch", "seq", 2, 4))
    g.nodes.append(Node("reshape", [ln], [q], {"shape": ["batch", "seq", 2, 4]}, "attn"))
    qt = g.add_value("qt", "float32", ("batch", 2, "seq", 4))
    g.nodes.append(Node("permute", [q], [qt], {"perm": [0, 2, 1, 3]}, "attn"))
    o = g.add_value("o", "float32", ("batch", 2, "seq", 4))
    g.nodes.append(Node("scaled_dot_product_attention", [qt, qt, qt, ""], [o],
                        {"scale": 0.5, "is_causal": True, "enable_gqa": False}, "attn"))
    s = g.add_value("s", "float32", ("batch", 2, "seq - 1", 4))
    g.nodes.append(Node("slice", [o], [s], {"dim": 2, "start": 1, "end": "seq", "step": 1}, "tail"))
    m = g.add_value("m", "float32", ("batch", 2, 4))
    g.nodes.append(Node("amax", [o], [m], {"dims": [2], "keepdim": False}, "pool"))
    c = g.add_value("c", "float32", ("batch", 2, "seq + seq - 1", 4))
    g.nodes.append(Node("cat", [o, s], [c], {"dim": 2}, "x"))
    g.outputs += [m, c]
    out.append(g)
    return out


def _tokenizer_docs() -> list[dict]:
    """Small Hugging Face tokenizer.json documents, one per model family TISA compiles."""
    wp_vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on",
                                            "mat", "##s", "##ing", "a", "##t", ",", ".", "é", "中"])}
    wordpiece = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in wp_vocab.items() if t.startswith("[")],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": wp_vocab},
    }
    from nac.tokenizer_vm.unicode import bytes_to_unicode

    chars = [bytes_to_unicode()[b] for b in range(256)]
    vocab = {c: i for i, c in enumerate(chars)}
    merges = []
    for a, b in [("t", "h"), ("th", "e"), ("Ġ", "c"), ("Ġc", "a"), ("Ġca", "t"), ("a", "t")]:
        merges.append(f"{a} {b}")
        vocab.setdefault(a + b, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    bpe = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab["<|endoftext|>"], "content": "<|endoftext|>", "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                  "merges": merges},
    }
    pieces = [["<unk>", 0.0], ["▁", -2.0], ["▁the", -3.0], ["▁cat", -4.0], ["s", -3.5], ["at", -4.5], ["c", -5.0],
              ["t", -5.0], ["a", -5.0], ["h", -5.5], ["e", -5.5], ["▁sat", -6.0]] + \
             [[f"<0x{b:02X}>", -10.0] for b in range(256)]
    unigram = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"},
                                                           {"type": "Replace", "pattern": {"Regex": " {2,}"},
                                                            "content": " "}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        "post_processor": None,
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": 0, "vocab": pieces, "byte_fallback": True},
    }
    return [wordpiece, bpe, unigram]


def seeds(target: str) -> list[bytes]:
    """Valid inputs of ``target`` to start fuzzing from."""
    from nac.format.container import (GRAPH, METADATA, OPTIONAL, PARAMS, TEST_VECTORS, TOKENIZER, pack_sections,
                                      safetensors_bytes)
    from nac.tokenizer_vm import compile_tokenizer, tokenizer_section

    progs = [compile_tokenizer(d, name=f"seed-{k}") for k, d in enumerate(_tokenizer_docs())]
    if target == "tisa":
        return [p.to_bytes() for p in progs]
    out = []
    for k, g in enumerate(_graphs()):
        meta = {"task": "test", "model": f"seed-{k}"}
        sections = [(GRAPH, 0, json.dumps(g.to_json()).encode()), (METADATA, 0, b""),
                    (PARAMS, 0, safetensors_bytes(g.params))]
        if k == 2:
            blob, info = tokenizer_section(progs[0])
            meta["tokenizer"] = info
            sections.append((TOKENIZER, 0, blob))
        sections[1] = (METADATA, 0, json.dumps(meta).encode())
        vectors = _test_vectors(g)
        if vectors is not None:
            sections.append((TEST_VECTORS, OPTIONAL, vectors))
        out.append(b"".join(pack_sections(sections)))
    return out


def _test_vectors(g) -> bytes | None:
    """A test-vectors section for graph ``g``: one case at every dimension's smallest size >= 1,
    its outputs computed by the engine (None if the graph cannot run there)."""
    import nac
    from nac.format.container import NacFile
    from safetensors.numpy import save

    env = {d: max(1, int(r.get("min") or 0)) for d, r in g.dims.items()}
    model = nac.Model(NacFile(Path("<seed>"), (1, 0), [], g, {}))
    try:
        feeds = {n: np.ones(tuple(nac.format.eval_dim(d, env) for d in s), dt) for n, dt, s in model.input_spec()}
        outs = model.run(feeds)
    except nac.NacError:
        return None
    tensors = {f"case0.input.{n}": a for n, a in feeds.items()}
    tensors.update({f"case0.output.{n}": a for n, a in zip(g.outputs, outs)})
    return save(tensors, metadata={"cases": "1", "tolerance": "1e-4", "reference": "seed"})


# ------------------------------------------------------------------------------------------------
# taking a file apart and putting it back together
# ------------------------------------------------------------------------------------------------
def split_container(data: bytes) -> list[list] | None:
    """``[[kind, flags, payload], ...]`` of a container, or None if the header is not readable."""
    from nac.format.container import ENTRY, HEADER, MAGIC

    if len(data) < HEADER.size or data[:8] != MAGIC:
        return None
    count, table_off = struct.unpack_from("<I", data, 16)[0], struct.unpack_from("<Q", data, 24)[0]
    if count > 64 or table_off + ENTRY.size * count > len(data):
        return None
    out = []
    for i in range(count):
        kind, flags, off, length, _, _ = ENTRY.unpack_from(data, table_off + i * ENTRY.size)
        if off + length > len(data):
            return None
        out.append([kind, flags, data[off:off + length]])
    return out


def join_container(sections: list[list]) -> bytes:
    from nac.format.container import pack_sections

    return b"".join(pack_sections([tuple(s) for s in sections]))


def fix_crcs(data: bytes) -> bytes:
    """Recompute every CRC-32 (sections and header) of a container whose layout is intact."""
    from nac.format.container import ENTRY, HEADER

    if len(data) < HEADER.size:
        return data
    buf = bytearray(data)
    count, table_off = struct.unpack_from("<I", buf, 16)[0], struct.unpack_from("<Q", buf, 24)[0]
    if count > 64 or table_off + ENTRY.size * count > len(buf):
        return data
    for i in range(count):
        at = table_off + i * ENTRY.size
        kind, flags, off, length, _, r = ENTRY.unpack_from(buf, at)
        if off + length <= len(buf):
            ENTRY.pack_into(buf, at, kind, flags, off, length, zlib.crc32(bytes(buf[off:off + length])), r)
    struct.pack_into("<Q", buf, 32, len(buf))
    table = bytes(buf[table_off:table_off + ENTRY.size * count])
    struct.pack_into("<I", buf, 40, zlib.crc32(bytes(buf[:40]) + table))
    return bytes(buf)


# ------------------------------------------------------------------------------------------------
# mutations
# ------------------------------------------------------------------------------------------------
_NASTY_INTS = [0, -1, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, 2**64, 2**70,
               -2**31, -2**63, -99]
_NASTY_STRINGS = ["", "batch", "seq", "batch//0", "max()", "min(batch)", "batch % 0", "-batch", "batch*batch*batch",
                  "+".join(["batch"] * 5000), "(" * 300 + "1" + ")" * 300, "__import__('os')", "seq - 1000",
                  "\x00", "é" * 10, "float32", "none", "relu", "tanh", "io", "a" * 5000]


def _nasty_value(rng: random.Random, depth: int = 0):
    c = rng.randrange(12)
    if c == 0:
        return rng.choice(_NASTY_INTS)
    if c == 1:
        return rng.choice(_NASTY_STRINGS)
    if c == 2:
        return rng.choice([None, True, False, 0.5, -0.0, 1e308, float("inf"), float("nan")])
    if c == 3 and depth < 3:
        return [_nasty_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if c == 4 and depth < 3:
        return {rng.choice(_NASTY_STRINGS[:8] + ["min", "max", "shape", "dims"]): _nasty_value(rng, depth + 1)}
    if c == 5:
        return [rng.choice(_NASTY_INTS) for _ in range(rng.randrange(1, 5))]
    if c == 6:
        return "NESTED"  # replaced by a deep nesting at serialisation
    if c == 7:
        return "BIGINT"  # replaced by a 5,000-digit integer at serialisation
    return rng.randrange(-4, 70)


def _paths(doc, prefix=()):
    """Every (path, value) inside a JSON document, depth-first (bounded)."""
    out = [(prefix, doc)]
    if isinstance(doc, dict):
        for k, v in list(doc.items())[:64]:
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:64]):
            out += _paths(v, prefix + (i,))
    return out


def _set(doc, path, value):
    if not path:
        return value
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


def mutate_json(raw: bytes, rng: random.Random) -> bytes:
    """One structural change to a JSON document: replace, delete or duplicate a field, retype it,
    or swap two values of the same document."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    paths = _paths(doc)
    path, value = rng.choice(paths)
    c = rng.randrange(6)
    if c == 0 and path:  # delete
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif isinstance(parent, list) and parent:
            parent.pop(path[-1])
    elif c == 1 and isinstance(value, list) and value:  # duplicate an element
        value.append(json.loads(json.dumps(rng.choice(value))))
    elif c == 2:  # swap with another value of the document
        other = rng.choice(paths)[1]
        doc = _set(doc, path, json.loads(json.dumps(other)))
    elif c == 3 and isinstance(value, int) and not isinstance(value, bool):
        doc = _set(doc, path, value + rng.choice([-1, 1, -value - 1, 2**31, -2**40]))
    else:
        doc = _set(doc, path, _nasty_value(rng))
    text = json.dumps(doc, allow_nan=True)
    if '"NESTED"' in text:
        text = text.replace('"NESTED"', "[" * 100000 + "]" * 100000, 1)
    if '"BIGINT"' in text:
        text = text.replace('"BIGINT"', "9" * 5000, 1)
    return text.encode()


def mutate_safetensors(blob: bytes, rng: random.Random) -> bytes:
    """Change the JSON header of a safetensors blob (shapes, offsets, dtypes) or its data bytes."""
    if len(blob) < 8:
        return blob
    hlen = struct.unpack_from("<Q", blob, 0)[0]
    if hlen > len(blob) - 8:
        return blob
    header, data = blob[8:8 + hlen], blob[8 + hlen:]
    if rng.random() < 0.25 and len(data) >= 4:  # table contents (TISA): overwrite a few entries
        arr = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(0, max(1, len(arr) - 4)) & ~3
            struct.pack_into("<i", arr, i, rng.choice([2147483647, -2147483648, -1, 0x110000, 0xD800, 1 << 20,
                                                       rng.randrange(-5, 70000)]))
        data = bytes(arr)
    else:
        try:
            doc = json.loads(header)
        except ValueError:
            return blob
        names = [k for k in doc if k != "__metadata__"]
        if names and rng.random() < 0.7:
            name = rng.choice(names)
            field = rng.choice(["shape", "data_offsets", "dtype"])
            doc[name][field] = rng.choice([[2**32, 2**32], [2**70], [-1], [0], "I64", "F64", "BOGUS", [3, 2],
                                           [0, 2**40], [5, 1], None, _nasty_value(rng)])
        elif "__metadata__" in doc and "tisa" in doc["__metadata__"]:
            doc["__metadata__"]["tisa"] = mutate_json(doc["__metadata__"]["tisa"].encode(), rng).decode()
        header = json.dumps(doc).encode()
    return struct.pack("<Q", len(header)) + header + data


def mutate(data: bytes, rng: random.Random, target: str, byte_mutator=None) -> bytes:
    """One container-aware mutation of an input of ``target``, CRCs recomputed.

    ``byte_mutator(payload) -> payload`` (libFuzzer's, under atheris) is used for a share of the
    mutations, inside one section so the result still passes its checksum."""
    if target == "tisa":
        if byte_mutator is not None and rng.random() < 0.2:
            return byte_mutator(data)
        return mutate_safetensors(data, rng)
    from nac.format.container import GRAPH, METADATA, PARAMS, PARAMS_EXTERNAL, TOKENIZER

    sections = split_container(data)
    if not sections:
        return fix_crcs(byte_mutator(data) if byte_mutator else data)
    c = rng.random()
    if c < 0.05:  # the container itself: drop, repeat or retype a section; change the version
        k = rng.randrange(len(sections))
        choice = rng.randrange(4)
        if choice == 0 and len(sections) > 1:
            sections.pop(k)
        elif choice == 1:
            sections.append(list(sections[k]))
        elif choice == 2:
            sections[k][0] = rng.choice([GRAPH, METADATA, PARAMS, PARAMS_EXTERNAL, TOKENIZER, 99])
        else:
            sections[k][1] = rng.choice([0, 0x8000, 1])
        return join_container(sections)
    k = rng.randrange(len(sections))
    kind, payload = sections[k][0], sections[k][2]
    if byte_mutator is not None and c < 0.25:
        sections[k][2] = byte_mutator(payload)
    elif kind in (GRAPH, METADATA, PARAMS_EXTERNAL):
        sections[k][2] = mutate_json(payload, rng)
    elif kind in (PARAMS, TOKENIZER):
        sections[k][2] = mutate_safetensors(payload, rng)
    return join_container(sections)


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------
_SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")


def run_reader(data: bytes, scratch: Path | None = None) -> None:
    """Target ``reader``: load a file, summarise it, run it at shapes inside its ranges, use its
    tokenizer. Only `NacError`s may escape."""
    import nac
    from nac.apps.cli import describe

    path = (scratch or _SCRATCH) / f"nacfuzz-{id(data) & 0xFFFF}-{len(data)}.nac"
    path.write_bytes(data)
    try:
        try:
            m = nac.load(path, max_memory=256 << 20)
        except nac.NacError:
            try:  # nac info on a bad file: shows what it can, names what is wrong
                json.dumps(describe(path))
            except nac.NacError:
                pass
            return
        json.dumps(describe(path))
        rng = np.random.default_rng(zlib.crc32(data))
        for _ in range(2):
            env = {d: int(rng.integers(r.get("min") or 0, (r.get("max") if r.get("max") is not None
                                                            else (r.get("min") or 0) + 8) + 1))
                   for d, r in m.graph.dims.items()}
            feeds = {}
            try:
                for name, dtype, shape in m.input_spec():
                    dims = tuple(nac.format.eval_dim(d, env) for d in shape)
                    if any(d < 0 for d in dims):
                        raise nac.NacInputError("negative")
                    try:
                        if math.prod(dims) > 1 << 20:  # a huge input costs the harness nothing: one broadcast value
                            feeds[name] = np.broadcast_to(np.ones(1, dtype), dims)
                        else:
                            feeds[name] = (rng.normal(size=dims) * 3).astype(dtype) if dtype.startswith("float") \
                                else rng.integers(-2, 12, size=dims).astype(dtype)
                    except ValueError:  # a shape numpy cannot make (past its address space, even with a zero
                        raise nac.NacInputError("unrepresentable input") from None  # dim): no caller can pass it
                m.run(feeds)
            except nac.NacError:
                pass
        if m.file.test_vectors is not None:
            try:  # nac verify: replays the section's cases (its tensors are untrusted too)
                nac.verify(m).to_dict()
            except nac.NacError:
                pass
        if m.file.tokenizer is not None:
            try:
                tok = m.tokenizer
                tok.decode(tok.encode("the cats sat, é 中 x").ids)
            except nac.NacError:
                pass
    finally:
        path.unlink(missing_ok=True)


_TEXTS = ["the cat sat on the mat", "", " ", "é中\u0301x", "a" * 300, "<|endoftext|>hi", "[CLS] x [SEP]",
          "\ud7ff\ue000\U0010ffff", "  double  spaces  ", "ß İ ﬁ"]


def run_tisa(data: bytes) -> None:
    """Target ``tisa``: load a program, encode and decode. Only `NacError`s may escape."""
    import nac
    from nac.tokenizer_vm import Program, Tokenizer

    try:
        tok = Tokenizer(Program.from_bytes(data, "fuzz"))
    except nac.NacError:
        return
    rng = random.Random(zlib.crc32(data))
    for text in rng.sample(_TEXTS, 3):
        try:
            enc = tok.encode(text)
            enc.offsets  # the aligned path: every normaliser and pre-tokeniser again, tracking spans
            tok.decode(enc.ids)
            tok.decode([rng.randrange(-2, tok.get_vocab_size() + 2) for _ in range(4)])
        except nac.NacError:
            pass


RUNNERS = {"reader": run_reader, "tisa": run_tisa}
