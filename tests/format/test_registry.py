"""The op table (`nac.format.ops`) is the one registry: adding an op means a schema entry, a
shape rule, an engine kernel, a C kernel, a lowering rule and a test case. This test fails when
any of them is missing, and checks that the lists other modules use are derived from the table."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import have
from nac.format.ops import ACTIVATIONS, FUSABLE, OPS, QUANTISED_INPUTS, VIEW_OPS
from nac.format.shapes import RULES

ROOT = Path(__file__).resolve().parents[2]


def test_every_op_has_a_shape_rule_and_an_engine_kernel():
    from nac.engine.kernels import KERNELS

    assert set(RULES) == set(OPS)
    assert set(KERNELS) == set(OPS)


def test_every_op_has_a_c_kernel():
    from nac.accel.emit import SUPPORTED, _ACT

    assert set(OPS) <= SUPPORTED, sorted(set(OPS) - SUPPORTED)
    assert set(_ACT) == set(ACTIVATIONS)  # the C epilogue knows every fusable activation


def test_every_op_is_produced_by_the_exporter():
    """Each op name is written by a lowering rule or a pass (a string literal in compile/)."""
    literals = set()
    for path in (ROOT / "compile").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
    assert set(OPS) <= literals, sorted(set(OPS) - literals)


@pytest.mark.skipif(not have("torch"), reason="the op test cases compare with torch")
def test_every_op_has_a_test_case():
    import importlib.util

    spec = importlib.util.spec_from_file_location("op_cases", ROOT / "tests" / "engine" / "test_ops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert set(mod.CASES) == set(OPS), sorted(set(OPS) ^ set(mod.CASES))


def test_derived_lists():
    from nac.compile import quantize
    from nac.engine.kernels import VIEW_OPS as engine_views
    from nac.format import graph

    assert engine_views is VIEW_OPS and graph.QUANTISED_INPUTS is QUANTISED_INPUTS
    assert set(quantize.QUANTISABLE.items()) == set(QUANTISED_INPUTS)
    assert all(OPS[o].view for o in VIEW_OPS) and all(OPS[o].family == "shape" for o in VIEW_OPS)
    for op, fuse in FUSABLE.items():
        assert fuse({}) in ACTIVATIONS + (None,), op
    assert FUSABLE["gelu"]({"approximate": "tanh"}) == "gelu_tanh"
    assert FUSABLE["clamp"]({"min": 0.0, "max": 6.0}) == "relu6" and FUSABLE["clamp"]({"min": -1.0}) is None


def test_undeclared_attributes_are_refused():
    """Every attribute a kernel may read is declared in the op table; any other is a format error
    (a file cannot slip a switch past the validator), and linear's activation_quant is declared."""
    import numpy as np

    from conftest import one_node_graph
    from nac.errors import NacFormatError
    from nac.format.validate import check_graph

    assert "activation_quant" in OPS["linear"].attrs
    x, w = np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32)
    g, _ = one_node_graph("linear", [x, w], {"activation": "relu"}, (2, 4), "float32", params=(1,))
    check_graph(g, "ok")
    g.nodes[0].attrs["fast_math"] = True
    with pytest.raises(NacFormatError, match=r"attribute\(s\) \['fast_math'\] that linear does not take"):
        check_graph(g, "bad")
