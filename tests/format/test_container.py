"""The .nac container: round trip, zero-copy views, safetensors interoperability, atomic writes,
and a clear NacFormatError for every kind of damage."""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

import nac
from nac.format.container import ENTRY, read_header, read_nac, write_nac
from nac.format.graph import Graph, Node


def small_graph() -> Graph:
    g = Graph()
    x = g.add_value("x", "float32", ("batch", 4))
    g.inputs.append(x)
    w = g.add_param("fc.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    b = g.add_param("fc.bias", np.array([1, 2, 3], np.float32))
    y = g.add_value("y", "float32", ("batch", 3))
    g.nodes.append(Node("linear", [x, w, b], [y], {"activation": "relu"}))
    g.outputs.append(y)
    g.dims["batch"] = {"min": 1, "max": 8}
    return g


@pytest.fixture
def nacfile(tmp_path):
    return write_nac(tmp_path / "m.nac", small_graph(), {"task": "test", "labels": ["a", "b", "c"]})


def test_round_trip_and_zero_copy(nacfile):
    f = read_nac(nacfile)
    w = f.graph.params["fc.weight"]
    np.testing.assert_array_equal(w, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert not w.flags.owndata and not w.flags.writeable  # a view into the read-only mapping
    assert f.metadata["labels"] == ["a", "b", "c"]
    m = nac.load(nacfile)
    x = np.array([[1, 0, 0, -1], [0, 0, 0, 0]], np.float32)
    want = np.maximum(x @ np.arange(12, dtype=np.float32).reshape(3, 4).T + [1, 2, 3], 0)
    np.testing.assert_allclose(m.run({"x": x})[0], want)


def test_sections_are_aligned(nacfile):
    _, sections, _, _ = read_header(nacfile)
    assert all(s.offset % 64 == 0 for s in sections)


def test_parameters_are_safetensors(nacfile, tmp_path):
    from safetensors.numpy import load as st_load

    f = read_nac(nacfile)
    s = next(s for s in f.sections if s.name == "parameters")
    blob = nacfile.read_bytes()[s.offset:s.offset + s.length]
    tensors = st_load(blob)
    np.testing.assert_array_equal(tensors["fc.bias"], [1, 2, 3])


def test_external_weights(tmp_path):
    from safetensors.numpy import load_file

    path = write_nac(tmp_path / "ext.nac", small_graph(), {}, weights="external")
    side = tmp_path / "ext.safetensors"
    assert side.is_file()
    np.testing.assert_array_equal(load_file(side)["fc.bias"], [1, 2, 3])
    m = nac.load(path)
    assert m.file.weights_path == side
    side.unlink()
    with pytest.raises(nac.NacFormatError, match="external weights file .* is missing"):
        nac.load(path)


def test_external_weights_changed(tmp_path):
    path = write_nac(tmp_path / "ext.nac", small_graph(), {}, weights="external")
    side = tmp_path / "ext.safetensors"
    data = bytearray(side.read_bytes())
    data[-1] ^= 0xFF
    side.write_bytes(bytes(data))
    with pytest.raises(nac.NacFormatError, match="contents differ"):
        nac.load(path)


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "m.nac"
    write_nac(target, small_graph(), {"v": 1})
    before = target.read_bytes()
    import nac.format.container as C

    real = C.safetensors_bytes

    def crash(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt("simulated crash while writing")

    monkeypatch.setattr(C, "safetensors_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        write_nac(target, small_graph(), {"v": 2})
    monkeypatch.setattr(C, "_atomic_write", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    monkeypatch.setattr(C, "safetensors_bytes", real)
    with pytest.raises(OSError):
        write_nac(target, small_graph(), {"v": 3})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nac"]  # no temporary left behind


def test_temporary_removed_when_write_fails(tmp_path, monkeypatch):
    import nac.format.container as C

    monkeypatch.setattr(C.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("I/O error")))
    with pytest.raises(OSError):
        write_nac(tmp_path / "m.nac", small_graph(), {})
    assert list(tmp_path.iterdir()) == []


# -- damage ------------------------------------------------------------------------------------------------
def damaged(path, fn):
    data = bytearray(path.read_bytes())
    fn(data)
    out = path.with_name("bad.nac")
    out.write_bytes(bytes(data))
    return out


def test_missing_file(tmp_path):
    with pytest.raises(nac.NacFormatError, match="no such file"):
        nac.load(tmp_path / "nope.nac")


def test_empty_and_truncated(nacfile):
    with pytest.raises(nac.NacFormatError, match="too short"):
        nac.load(damaged(nacfile, lambda d: d.__delitem__(slice(10, None))))
    with pytest.raises(nac.NacFormatError, match="truncated"):
        nac.load(damaged(nacfile, lambda d: d.__delitem__(slice(-100, None))))


def test_wrong_magic(nacfile):
    with pytest.raises(nac.NacFormatError, match="not a .nac file"):
        nac.load(damaged(nacfile, lambda d: d.__setitem__(slice(0, 4), b"PK\x03\x04")))


def test_newer_major_version(nacfile):
    with pytest.raises(nac.NacFormatError, match="version 2.0 is not supported"):
        nac.load(damaged(nacfile, lambda d: struct.pack_into("<H", d, 8, 2)))


@pytest.mark.parametrize("where", ["header", "graph", "metadata", "parameters"])
def test_flipped_byte(nacfile, where):
    _, sections, _, _ = read_header(nacfile)
    if where == "header":
        pos = 20  # reserved field, covered by the header CRC
    else:
        s = next(s for s in sections if s.name == where)
        pos = s.offset + s.length // 2
    bad = damaged(nacfile, lambda d: d.__setitem__(pos, d[pos] ^ 0x10))
    with pytest.raises(nac.NacFormatError, match="corrupt"):
        nac.load(bad)


def _rewrite_table(d, k, **fields):
    count = struct.unpack_from("<I", d, 16)[0]
    kind, flags, off, length, crc, r = ENTRY.unpack_from(d, 64 + 32 * k)
    vals = dict(kind=kind, flags=flags, off=off, length=length, crc=crc)
    vals.update(fields)
    ENTRY.pack_into(d, 64 + 32 * k, vals["kind"], vals["flags"], vals["off"], vals["length"], vals["crc"], 0)
    struct.pack_into("<I", d, 40, zlib.crc32(bytes(d[:40]) + bytes(d[64:64 + 32 * count])))


def test_section_outside_file(nacfile):
    bad = damaged(nacfile, lambda d: _rewrite_table(d, 2, length=10 ** 9))
    with pytest.raises(nac.NacFormatError, match="parameters section .* lies outside the file"):
        nac.load(bad)


def test_unknown_required_section(nacfile):
    bad = damaged(nacfile, lambda d: _rewrite_table(d, 1, kind=99))
    with pytest.raises(nac.NacFormatError, match="unknown kind 99"):
        nac.load(bad)


def test_tensor_offsets_outside_data(tmp_path):
    # a writer that lies: the safetensors header claims more bytes than the blob has
    g = small_graph()
    path = write_nac(tmp_path / "m.nac", g, {})
    f = read_nac(path)
    s = next(s for s in f.sections if s.name == "parameters")

    def lie(d):
        hlen = struct.unpack_from("<Q", d, s.offset)[0]
        header = json.loads(bytes(d[s.offset + 8:s.offset + 8 + hlen]))
        header["fc.bias"]["data_offsets"] = [0, 9999]
        new = json.dumps(header, separators=(",", ":")).encode().ljust(hlen)
        assert len(new) == hlen
        d[s.offset + 8:s.offset + 8 + hlen] = new
        _rewrite_table(d, 2, crc=zlib.crc32(bytes(d[s.offset:s.offset + s.length])))

    with pytest.raises(nac.NacFormatError, match="'fc.bias' points outside the data"):
        nac.load(damaged(path, lie))


def test_shape_mismatch_between_graph_and_weights(tmp_path):
    g = small_graph()
    g.values["fc.bias"].shape = (4,)
    with pytest.raises(nac.NacFormatError, match="parameter 'fc.bias' is float32\\[3\\] in the weights"):
        nac.load(write_nac(tmp_path / "m.nac", g, {}))


def test_unknown_op_in_graph(tmp_path):
    g = small_graph()
    g.nodes[0].op = "frobnicate"
    with pytest.raises(nac.NacFormatError, match="unknown op 'frobnicate'"):
        nac.load(write_nac(tmp_path / "m.nac", g, {}))


def test_malicious_dimension_expression(tmp_path):
    g = small_graph()
    g.values["x"].shape = ("__import__('os').system('true')", 4)
    with pytest.raises(nac.NacFormatError, match="invalid dimension expression"):
        nac.load(write_nac(tmp_path / "m.nac", g, {}))


def test_bad_weights_option(tmp_path):
    with pytest.raises(nac.NacFormatError, match="weights must be"):
        write_nac(tmp_path / "m.nac", small_graph(), {}, weights="zip")
    assert list(tmp_path.iterdir()) == []
