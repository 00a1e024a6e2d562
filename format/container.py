"""The `.nac` container: a fixed header, a section table and aligned sections.

Byte layout (little-endian; see SPEC.md for the normative text):

    offset  size  field
    0       8     magic  b"\\x89NAC\\r\\n\\x1a\\n"
    8       2     format major version
    10      2     format minor version
    12      4     flags (0)
    16      4     section count
    20      4     reserved (0)
    24      8     section table offset (64)
    32      8     total file size in bytes
    40      4     CRC-32 of bytes 0..40 and of the whole section table
    44      20    reserved (0)
    64      32*n  section table: kind u32, flags u32, offset u64, length u64, crc32 u32, reserved u32

Sections start at multiples of `ALIGN` bytes so that tensors can be viewed in place.
Parameters are a safetensors blob (inline) or a sibling ``.safetensors`` file (external).

`write_nac` writes atomically (temporary file, fsync, rename). `read_nac` maps the file and
checks magic, version, sizes, every offset and every CRC before it hands out zero-copy views.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import re
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nac.errors import NacFormatError
from nac.format import schema
from nac.format.graph import DTYPES, Graph

MAGIC = b"\x89NAC\r\n\x1a\n"
VERSION = (1, 1)  # the newest this reader reads; writers write the lowest that expresses the file
VERSION_SINGLE = (1, 0)  # a file of one graph
ALIGN = 64
HEADER = struct.Struct("<8sHHIIIQQI20x")  # 64 bytes
ENTRY = struct.Struct("<IIQQII")  # 32 bytes
assert HEADER.size == 64 and ENTRY.size == 32

# Section kinds. Bit 0x8000 in a section's flags marks it optional: a reader that does not know
# its kind may skip it. Unknown kinds without that flag make the file unreadable.
GRAPH, METADATA, PARAMS, PARAMS_EXTERNAL, TOKENIZER, TEST_VECTORS, METHODS = 1, 2, 3, 4, 5, 6, 7
SECTION_NAMES = {GRAPH: "graph", METADATA: "metadata", PARAMS: "parameters",
                 PARAMS_EXTERNAL: "external-parameters", TOKENIZER: "tokenizer", TEST_VECTORS: "test-vectors",
                 METHODS: "methods"}
#: The name of the one method of a single-graph file.
DEFAULT_METHOD = "forward"
OPTIONAL = 0x8000
MAX_JSON_SECTION = 256 << 20  # a graph or metadata document larger than this is refused

_ST_DTYPE = {st: name for name, (_, st) in DTYPES.items()}


@dataclass
class Section:
    """One entry of the section table (offset and length in bytes from the start of the file)."""

    kind: int
    flags: int
    offset: int
    length: int
    crc32: int

    @property
    def name(self) -> str:
        return SECTION_NAMES.get(self.kind, f"kind-{self.kind}")


@dataclass
class NacFile:
    """A `.nac` file opened for reading: its graph (parameters are views into the mapping),
    metadata, sections and the path(s) it came from. Keeps the memory map alive.

    ``methods`` maps each method name to its graph, in file order; the first is ``graph`` (a
    single-graph file has one method, `DEFAULT_METHOD`). All methods share the parameters."""

    path: Path
    version: tuple[int, int]
    sections: list[Section]
    graph: Graph
    metadata: dict
    weights_path: Path | None = None
    tokenizer: bytes | None = None
    test_vectors: Section | None = None
    _maps: list = field(default_factory=list, repr=False)
    methods: dict[str, Graph] = field(default_factory=dict)

    def __post_init__(self):
        if not self.methods:
            self.methods = {DEFAULT_METHOD: self.graph}

    def read_test_vectors(self) -> dict[str, np.ndarray] | None:
        """The test-vectors section's tensors (checked, zero-copy views), or None when the file
        has none. Raises NacFormatError for a malformed section."""
        s = self.test_vectors
        if s is None:
            return None
        return view_safetensors(self._maps[0], s.offset, s.length, f"{self.path}: test-vectors section")


# ------------------------------------------------------------------------------------------------
# safetensors blobs
# ------------------------------------------------------------------------------------------------
def safetensors_bytes(params: dict[str, np.ndarray]) -> bytes:
    """Serialise parameters with the `safetensors` library (so any safetensors tool reads them)."""
    from safetensors.numpy import save

    return save({k: np.asarray(v, order="C") for k, v in params.items()})


def view_safetensors(buf, base: int, length: int, where: str,
                     extra_dtypes: dict[str, np.dtype] | None = None) -> dict[str, np.ndarray]:
    """Zero-copy numpy views of the tensors of a safetensors blob at ``buf[base:base+length]``.

    ``extra_dtypes`` admits safetensors dtypes beyond the graph's (e.g. ``{"F64": float64}`` for
    tokenizer tables).

    Checks the header length, the JSON, every dtype, shape and offset pair (inside the data,
    matching the byte size, no overlaps) before creating any view.

    Raises:
        NacFormatError: anything malformed; the message names ``where`` and the tensor.
    """
    if length < 8:
        raise NacFormatError(f"{where}: safetensors blob of {length} bytes is too short")
    (hlen,) = struct.unpack_from("<Q", buf, base)
    if hlen > min(length - 8, 100 << 20):
        raise NacFormatError(f"{where}: safetensors header length {hlen} exceeds the blob ({length} bytes)")
    header = parse_json(bytes(buf[base + 8: base + 8 + hlen]), f"{where}: safetensors header")
    if not isinstance(header, dict):
        raise NacFormatError(f"{where}: safetensors header is not a JSON object")
    data0 = base + 8 + hlen
    data_len = length - 8 - hlen
    spans, out = [], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) \
                    or not _int_list(info.get("shape"), 0, _MAX_TENSOR_RANK) or not _int_list(info.get("data_offsets"), 2, 2):
                raise TypeError
            if extra_dtypes and info["dtype"] in extra_dtypes:
                dt, dtype_name = np.dtype(extra_dtypes[info["dtype"]]), info["dtype"]
            else:
                dtype_name = _ST_DTYPE[info["dtype"]]
                dt = np.dtype(DTYPES[dtype_name][0])
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise NacFormatError(f"{where}: tensor {name!r} has a malformed or unsupported entry "
                                 f"{_clip(repr(info))}") from None
        if any(s < 0 or s > _MAX_TENSOR_DIM for s in shape):
            raise NacFormatError(f"{where}: tensor {name!r} has an impossible shape {_clip(str(list(shape)))}")
        if not (0 <= begin <= end <= data_len):
            raise NacFormatError(f"{where}: tensor {name!r} points outside the data ({begin}..{end} of {data_len})")
        count = math.prod(shape)  # Python integers: no wrap-around
        if (end - begin) != count * dt.itemsize:
            raise NacFormatError(f"{where}: tensor {name!r} has {end - begin} bytes, shape {list(shape)} "
                                 f"of {dtype_name} needs {count * dt.itemsize}")
        spans.append((begin, end, name))
        offset = data0 + begin
        if offset % dt.itemsize == 0:
            arr = np.frombuffer(buf, dtype=dt, count=count, offset=offset).reshape(shape)
        else:  # unaligned (a foreign writer): copy rather than fault
            arr = np.frombuffer(bytes(buf[offset: data0 + end]), dtype=dt).reshape(shape)
        out[name] = arr
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise NacFormatError(f"{where}: tensors {n0!r} and {n1!r} overlap")
    return out


_MAX_TENSOR_RANK = 16
_MAX_TENSOR_DIM = 1 << 48


def _int_list(v, lo: int, hi: int) -> bool:
    """``v`` is a list of lo..hi non-bool integers."""
    return isinstance(v, list) and lo <= len(v) <= hi and all(type(x) is int for x in v)


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + "…"


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _pad(n: int) -> int:
    return (-n) % ALIGN


def _temporary_name(path: Path) -> Path:
    """``.NAME.<pid>.<random>.tmp`` beside ``path``: hidden, and naming the process that writes it."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by writers that died (``kill -9``, power loss): those
    whose process no longer exists. A live writer's temporary is left alone."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        parts = name[len(prefix):].split(".") if name.startswith(prefix) and name.endswith(".tmp") else []
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except (PermissionError, OverflowError):
                continue
        else:
            continue  # this process's own writes clean up after themselves
        try:
            os.unlink(path.parent / name)
        except OSError:
            pass


def _atomic_write(path: Path, chunks) -> None:
    """Write byte chunks to ``path`` through a temporary file in the same folder, then rename.

    The temporary is created with mode 0666 less the caller's umask (the mode any new file gets),
    fsync'ed before the rename, and removed on every exit Python sees (an exception,
    KeyboardInterrupt, SystemExit); one left by a killed writer is removed by the next write to
    the same destination."""
    _remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_nac(path, graph: Graph | dict[str, Graph], metadata: dict | None = None, *, weights: str = "inline",
              tokenizer: bytes | None = None, test_vectors: bytes | None = None) -> Path:
    """Write a graph, its parameters and metadata to a `.nac` file, atomically.

    Args:
        path: destination; its folder must exist.
        graph: the graph; ``graph.params`` are stored in safetensors layout. Or several graphs,
            ``{method name: Graph}`` (format 1.1): the first is the default method and goes in
            the graph section, the others in the methods section; their parameters are stored
            once, in one parameters section (a name two methods share must hold the same data).
        metadata: JSON-serialisable task metadata (task, labels, preprocessing, ...).
        weights: ``"inline"`` (one file) or ``"external"`` (parameters in ``<stem>.safetensors``
            beside the `.nac`, which records its name, size and CRC-32).
        tokenizer: an optional tokenizer program blob (the TISA section).
        test_vectors: an optional safetensors blob of inputs and expected outputs (an optional
            section: readers that do not know it skip it; see `nac.apps.verify`).
    Returns:
        The path written.
    Raises:
        NacFormatError: bad ``weights`` value, unserialisable metadata, or a missing folder.
    """
    path = Path(path)
    if weights not in ("inline", "external"):
        raise NacFormatError(f"weights must be 'inline' or 'external', not {weights!r}")
    if not path.parent.is_dir():
        raise NacFormatError(f"cannot write {path}: folder {path.parent} does not exist")
    methods = dict(graph) if isinstance(graph, dict) else {DEFAULT_METHOD: graph}
    if not methods:
        raise NacFormatError("write_nac needs at least one graph")
    for name in methods:
        if not isinstance(name, str) or not _METHOD_NAME.fullmatch(name):
            raise NacFormatError(f"method name {name!r} is not an identifier of at most 64 characters")
    first, *others = methods.values()
    try:
        graph_doc = json.dumps(first.to_json(), separators=(",", ":")).encode()
        meta_doc = json.dumps(metadata or {}, separators=(",", ":"), ensure_ascii=False).encode()
        methods_doc = json.dumps({"methods": [{"name": n} if k == 0 else {"name": n, "graph": g.to_json()}
                                              for k, (n, g) in enumerate(methods.items())]},
                                 separators=(",", ":")).encode() if others else None
    except (TypeError, ValueError) as exc:
        raise NacFormatError(f"cannot serialise the graph or metadata to JSON: {exc}") from None
    blob = safetensors_bytes(_shared_params(methods))
    sections: list[tuple[int, int, bytes]] = [(GRAPH, 0, graph_doc), (METADATA, 0, meta_doc)]
    if methods_doc is not None:
        sections.append((METHODS, 0, methods_doc))
    weights_path = path.with_suffix(".safetensors")
    if weights == "inline":
        sections.append((PARAMS, 0, blob))
    else:
        ref = {"path": weights_path.name, "size": len(blob), "crc32": zlib.crc32(blob)}
        sections.append((PARAMS_EXTERNAL, 0, json.dumps(ref).encode()))
    if tokenizer is not None:
        sections.append((TOKENIZER, 0, tokenizer))
    if test_vectors is not None:
        sections.append((TEST_VECTORS, OPTIONAL, test_vectors))

    if weights == "external":
        _atomic_write(weights_path, [blob])
    _atomic_write(path, pack_sections(sections, VERSION if others else VERSION_SINGLE))
    return path


_METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two parameter arrays hold the same data (dtype, shape and every element)."""
    return a is b or (a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b))


def _shared_params(methods: dict[str, Graph]) -> dict[str, np.ndarray]:
    """The union of the methods' parameters, each stored once.

    Raises:
        NacFormatError: two methods hold different data under one name."""
    merged: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    for method, g in methods.items():
        for name, a in g.params.items():
            seen = merged.get(name)
            if seen is None:
                merged[name], owner[name] = a, method
            elif not same_tensor(seen, a):
                raise NacFormatError(f"methods {owner[name]!r} and {method!r} both store a parameter named {name!r} "
                                     f"with different data; rename one")
    return merged


def pack_sections(sections: list[tuple[int, int, bytes]], version: tuple[int, int] = VERSION_SINGLE) -> list[bytes]:
    """The bytes of a container holding ``sections`` (``(kind, flags, payload)`` in order): header,
    section table with each payload's CRC-32, aligned payloads. Joined, they are a `.nac` file."""
    table_end = HEADER.size + ENTRY.size * len(sections)
    offset = table_end + _pad(table_end)
    entries, body = [], []
    for kind, flags, data in sections:
        entries.append(ENTRY.pack(kind, flags, offset, len(data), zlib.crc32(data), 0))
        body.append(data)
        body.append(b"\0" * _pad(len(data)))
        offset += len(data) + _pad(len(data))
    total = offset
    table = b"".join(entries)
    head40 = HEADER.pack(MAGIC, *version, 0, len(sections), 0, HEADER.size, total, 0)[:40]
    header = HEADER.pack(MAGIC, *version, 0, len(sections), 0, HEADER.size, total, zlib.crc32(head40 + table))
    return [header, table, b"\0" * _pad(table_end), *body]


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def _map(path: Path):
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return b"", 0
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size
    except FileNotFoundError:
        raise NacFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise NacFormatError(f"{path}: is a folder, not a .nac file") from None


def _json_section(buf, s: Section, path: Path):
    if s.length > MAX_JSON_SECTION:
        raise NacFormatError(f"{path}: {s.name} section of {s.length} bytes is larger than allowed")
    return parse_json(bytes(buf[s.offset:s.offset + s.length]), f"{path}: {s.name} section")


def parse_json(data: bytes, where: str):
    """Parse a JSON document read from a file.

    Raises:
        NacFormatError: invalid UTF-8 or JSON, nesting too deep for the parser, or a number that
            Python will not convert (an integer of more than 4,300 digits).
    """
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise NacFormatError(f"{where} is not valid JSON ({_clip(str(exc))})") from None
    except RecursionError:
        raise NacFormatError(f"{where} is nested too deeply to be a NAC document") from None


def read_header(path) -> tuple[tuple[int, int], list[Section], object, int]:
    """Map a `.nac` file and check its header and section table.

    Returns:
        (version, sections, buffer, file size).
    Raises:
        NacFormatError: missing file, wrong magic, newer major version, truncated file, a header
            CRC mismatch, or a section outside the file or overlapping another.
    """
    path = Path(path)
    buf, size = _map(path)
    if size < HEADER.size:
        raise NacFormatError(f"{path}: file of {size} bytes is too short to be a .nac file (truncated?)")
    magic, major, minor, _flags, count, _r, table_off, total, crc = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise NacFormatError(f"{path}: not a .nac file (magic {magic!r}, expected {MAGIC!r})")
    if major != VERSION[0]:
        raise NacFormatError(f"{path}: format version {major}.{minor} is not supported by this NAC "
                             f"(reads {VERSION[0]}.x); upgrade nac to read it")
    if total != size:
        raise NacFormatError(f"{path}: header says {total} bytes but the file has {size} (truncated or appended)")
    table_end = table_off + ENTRY.size * count
    if table_off < HEADER.size or table_end > size or count > 4096:
        raise NacFormatError(f"{path}: section table ({count} entries at {table_off}) lies outside the file")
    table = bytes(buf[table_off:table_end])
    if zlib.crc32(bytes(buf[:40]) + table) != crc:
        raise NacFormatError(f"{path}: header or section table is corrupt (CRC-32 mismatch)")
    sections = [Section(*ENTRY.unpack_from(table, i * ENTRY.size)[:5]) for i in range(count)]
    spans = []
    for s in sections:
        if s.offset < table_end or s.offset + s.length > size:
            raise NacFormatError(f"{path}: {s.name} section ({s.offset}+{s.length}) lies outside the file")
        spans.append((s.offset, s.offset + s.length, s.name))
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if b[0] < a[1]:
            raise NacFormatError(f"{path}: sections {a[2]} and {b[2]} overlap")
    return (major, minor), sections, buf, size


@dataclass
class Documents:
    """A `.nac` file's checked sections before its graph is built: the graph and metadata
    documents (schema-valid), the parameter views, the tokenizer blob and the test-vectors
    section. Keeps the memory maps alive."""

    path: Path
    version: tuple[int, int]
    sections: list[Section]
    graph_doc: dict
    metadata: dict
    params: dict
    weights_path: Path | None
    tokenizer: bytes | None
    test_vectors: Section | None
    maps: list
    methods_doc: list | None = None  # the methods section's entries (format 1.1), or None


def _crc32(buf, offset: int, length: int) -> int:
    """CRC-32 of ``buf[offset:offset + length]`` read in place (slicing a memory map copies it:
    90 MB took 0.14-0.23 s of a MiniLM load)."""
    with memoryview(buf)[offset:offset + length] as part:
        return zlib.crc32(part)


def read_documents(path, *, verify: bool = True) -> Documents:
    """Map a `.nac` file and check everything but the graph itself: header, sections, CRCs,
    the graph and metadata documents against their schemas, the parameters (inline or external).
    `read_nac` builds the graph from this; `nac bind` reads a weight-free file with it.

    Raises:
        NacFormatError: as `read_nac`, except for problems of the graph itself.
    """
    path = Path(path)
    version, sections, buf, _ = read_header(path)
    maps = [buf]
    by_kind: dict[int, Section] = {}
    for s in sections:
        if s.kind not in SECTION_NAMES:
            if s.flags & OPTIONAL:
                continue
            raise NacFormatError(f"{path}: required section of unknown kind {s.kind}; "
                                 f"written by a newer NAC (format {version[0]}.{version[1]})")
        if s.kind in by_kind:
            raise NacFormatError(f"{path}: {s.name} section appears twice")
        if verify and _crc32(buf, s.offset, s.length) != s.crc32:
            raise NacFormatError(f"{path}: {s.name} section is corrupt (CRC-32 mismatch)")
        by_kind[s.kind] = s
    for kind in (GRAPH, METADATA):
        if kind not in by_kind:
            raise NacFormatError(f"{path}: the {SECTION_NAMES[kind]} section is missing")
    graph_doc = _json_section(buf, by_kind[GRAPH], path)
    metadata = _json_section(buf, by_kind[METADATA], path)
    schema.validate(graph_doc, "graph", str(path))
    schema.validate(metadata, "metadata", str(path))
    methods_doc = None
    if METHODS in by_kind:
        doc = _json_section(buf, by_kind[METHODS], path)
        schema.validate(doc, "methods", f"{path}: methods section")
        methods_doc = doc["methods"]
        names = [m["name"] for m in methods_doc]
        if len(set(names)) != len(names):
            raise NacFormatError(f"{path}: methods section names a method twice ({names})")
        if "graph" in methods_doc[0] or any("graph" not in m for m in methods_doc[1:]):
            raise NacFormatError(f"{path}: methods section: the first method is the graph section's and has no "
                                 f"'graph'; every other method needs one")
    weights_path = None
    if PARAMS in by_kind:
        s = by_kind[PARAMS]
        params = view_safetensors(buf, s.offset, s.length, f"{path}: parameters section")
    elif PARAMS_EXTERNAL in by_kind:
        ref = _json_section(buf, by_kind[PARAMS_EXTERNAL], path)
        schema.validate(ref, "external-parameters", str(path))
        if ref["path"] in (".", ".."):
            raise NacFormatError(f"{path}: external-parameters section names no valid sibling file")
        weights_path = path.parent / ref["path"]
        if not weights_path.is_file():
            raise NacFormatError(f"{path}: external weights file {weights_path} is missing "
                                 f"(it must sit beside the .nac file)")
        wbuf, wsize = _map(weights_path)
        maps.append(wbuf)
        if wsize != ref.get("size"):
            raise NacFormatError(f"{weights_path}: has {wsize} bytes, {path} expects {ref.get('size')}")
        if verify and zlib.crc32(wbuf) != ref.get("crc32"):
            raise NacFormatError(f"{weights_path}: contents differ from what {path} was written with (CRC-32)")
        params = view_safetensors(wbuf, 0, wsize, str(weights_path))
    else:
        raise NacFormatError(f"{path}: no parameters section")
    tok = None
    if TOKENIZER in by_kind:
        s = by_kind[TOKENIZER]
        tok = bytes(buf[s.offset:s.offset + s.length])
    return Documents(path, version, sections, graph_doc, metadata, params, weights_path, tok,
                     by_kind.get(TEST_VECTORS), maps, methods_doc)


def read_nac(path, *, verify: bool = True) -> NacFile:
    """Open a `.nac` file: map it, check it, and rebuild its graph over zero-copy parameter views.

    Args:
        path: the `.nac` file (an external weights file is found beside it).
        verify: check each section's CRC-32 (reads every byte once; ~30 ms per 100 MB).
    Raises:
        NacFormatError: see `read_header`; also a section CRC mismatch, a missing or different
            external weights file, a malformed graph, unknown required sections, a weight-free
            export (weights=None: `nac bind` first).
    """
    d = read_documents(path, verify=verify)
    path = d.path
    unbound = (d.metadata.get("compile") or {}).get("unbound")
    if isinstance(unbound, dict):
        tensors = unbound.get("tensors")
        count = len(tensors) if isinstance(tensors, (dict, list)) else "some"
        raise NacFormatError(f"{path}: {count} weight(s) have no data: this is a weight-free export "
                             f"(weights=None); fill them with `nac bind {path.name} WEIGHTS -o OUT.nac`")
    report = d.metadata.get("compile") or {}
    example = report.get("example_dims")
    graph = Graph.from_json(d.graph_doc, d.params, where=f"{path}: graph section",
                            example_dims=example if isinstance(example, dict) else None)
    methods = {DEFAULT_METHOD: graph}
    if d.methods_doc is not None:
        per_method = report.get("method_example_dims")
        per_method = per_method if isinstance(per_method, dict) else {}
        methods = {d.methods_doc[0]["name"]: graph}
        for m in d.methods_doc[1:]:
            dims = per_method.get(m["name"])
            methods[m["name"]] = Graph.from_json(m["graph"], d.params, where=f"{path}: method {m['name']!r}",
                                                 example_dims=dims if isinstance(dims, dict) else None)
    return NacFile(path, d.version, d.sections, graph, d.metadata, d.weights_path, d.tokenizer, d.test_vectors,
                   d.maps, methods)
