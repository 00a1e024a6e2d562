"""Ternary packing (public API) and the checks on quantised tensors in files."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nac
from nac.format import pack_ternary, unpack_ternary
from nac.format.container import read_nac, write_nac
from nac.format.graph import Graph, Node
from nac.format.quant import pack_ternary_rows, unpack_ternary_rows


def test_round_trip_every_length_0_to_1000():
    rng = np.random.default_rng(0)
    for n in range(1001):
        v = rng.integers(-1, 2, n).astype(np.int8)
        p = pack_ternary(v)
        assert p.dtype == np.uint8 and p.size == -(-n // 4)
        np.testing.assert_array_equal(unpack_ternary(p, n), v)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([-1, 0, 1]), max_size=2000))
def test_round_trip_random_contents(values):
    np.testing.assert_array_equal(unpack_ternary(pack_ternary(values), len(values)), np.array(values, np.int8))


def test_bit_layout_is_the_documented_one():
    # values -1, 0, 1, 1 -> codes 0, 1, 2, 2 at bits 0, 2, 4, 6; a short last byte is padded with 0b01
    assert pack_ternary([-1, 0, 1, 1]).tolist() == [0b10100100]
    assert pack_ternary([1]).tolist() == [0b01010110]


@pytest.mark.parametrize("bad", [[2], [0, -2], [0.5], [float("nan")], [1, 0, 3, 0, 0]])
def test_values_outside_ternary_raise(bad):
    with pytest.raises(nac.NacError, match="not in"):
        pack_ternary(bad)


def test_invalid_code_and_short_input_raise():
    with pytest.raises(nac.NacError, match="invalid code"):
        unpack_ternary(np.array([0b11], np.uint8), 1)
    with pytest.raises(nac.NacError, match="need 2 bytes"):
        unpack_ternary(np.array([0], np.uint8), 5)


def test_rows_pack_independently():
    t = np.random.default_rng(1).integers(-1, 2, (7, 13)).astype(np.int8)
    p = pack_ternary_rows(t)
    assert p.shape == (7, 4)
    np.testing.assert_array_equal(unpack_ternary_rows(p, 13), t)
    np.testing.assert_array_equal(p[3], pack_ternary(t[3]))


def quant_graph(scheme="ternary") -> Graph:
    g = Graph()
    x = g.add_value("x", "float32", (2, 8))
    g.inputs.append(x)
    t = np.random.default_rng(0).integers(-1, 2, (3, 8)).astype(np.int8)
    w = g.add_param("w", pack_ternary_rows(t) if scheme == "ternary" else t)
    s = g.add_param("w.scale", np.array([0.5, 1.0, 2.0], np.float32))
    g.values[w].quant = {"scheme": scheme, "scale": s, "shape": [3, 8]}
    y = g.add_value("y", "float32", (2, 3))
    g.nodes.append(Node("linear", [x, w, ""], [y]))
    g.outputs.append(y)
    return g


@pytest.mark.parametrize("scheme", ["int8", "ternary"])
def test_quantised_file_runs(tmp_path, scheme):
    g = quant_graph(scheme)
    m = nac.load(write_nac(tmp_path / "q.nac", g, {}))
    x = np.random.rand(2, 8).astype(np.float32)
    t = unpack_ternary_rows(g.params["w"], 8) if scheme == "ternary" else g.params["w"]
    want = x @ (t.astype(np.float32) * np.array([0.5, 1.0, 2.0], np.float32)[:, None]).T
    np.testing.assert_allclose(m.run([x])[0], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_ternary_code_11_in_file_raises(tmp_path):
    g = quant_graph()
    g.params["w"] = g.params["w"].copy()
    g.params["w"][1, 0] |= 0b11
    with pytest.raises(nac.NacFormatError, match="outside \\{-1, 0, 1\\}"):
        read_nac(write_nac(tmp_path / "q.nac", g, {}))


@pytest.mark.parametrize("scale, match", [
    (np.array([0.5, np.nan, 2.0], np.float32), "corrupt"),
    (np.array([0.5, -1.0, 2.0], np.float32), "corrupt"),
    (np.array([0.5, 1.0], np.float32), "must be float32 of shape"),
    (np.array([1, 1, 2], np.int32), "must be float32 of shape"),
])
def test_bad_scales_raise(tmp_path, scale, match):
    g = quant_graph()
    g.params["w.scale"] = scale
    g.values["w.scale"].shape, g.values["w.scale"].dtype = scale.shape, str(scale.dtype)
    with pytest.raises(nac.NacFormatError, match=match):
        read_nac(write_nac(tmp_path / "q.nac", g, {}))


def test_quantised_weight_read_by_another_op_raises(tmp_path):
    g = quant_graph()
    z = g.add_value("z", "uint8", (3, 2))
    g.nodes.append(Node("copy", ["w"], [z]))
    g.outputs.append(z)
    with pytest.raises(nac.NacFormatError, match="reads quantised tensor 'w'"):
        read_nac(write_nac(tmp_path / "q.nac", g, {}))
