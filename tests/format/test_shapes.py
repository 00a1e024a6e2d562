"""Shape rules (`nac.format.shapes`): one per op, agreeing with ATen. `tests/engine/test_ops.py`
proves each rule against torch on generated shapes (the planner checks every recorded output
against its rule); here: coverage of the op table and the rules' refusals."""
from __future__ import annotations

import pytest

from nac.format.ops import OPS
from nac.format.shapes import RULES, ShapeError, broadcast, infer


def test_every_op_has_a_shape_rule():
    assert set(OPS) == set(RULES)


@pytest.mark.parametrize("op,ins,attrs,message", [
    ("linear", [(2, 5), (3, 4), None], {}, "x has 5 features"),
    ("conv2d", [(1, 3, 8, 8), (4, 2, 3, 3), None], {"stride": [1, 1], "padding": [0, 0, 0, 0], "groups": 1},
     "do not fit"),
    ("conv2d", [(1, 4, 8, 8), (4, 4, 1, 1), None, (1, 4, 8, 1)], {"stride": [1, 1], "padding": [0, 0, 0, 0],
                                                                 "groups": 1}, "residual .* the output's shape"),
    ("reshape", [(2, 3)], {"shape": [4, -1, -1]}, "more than one -1"),
    ("reshape", [(2, 3)], {"shape": [-99]}, "below -1"),
    ("reshape", [(2, 3)], {"shape": [4, -1]}, "cannot infer"),
    ("permute", [(2, 3, 4)], {"perm": [0, 1, 7]}, "not a permutation"),
    ("permute", [(2, 3)], {"perm": [0, 0]}, "not a permutation"),
    ("expand", [(2, 3)], {"shape": [4, 3]}, "cannot expand"),
    ("select", [(2, 3)], {"dim": 1, "index": 3}, "out of range"),
    ("cat", [(2, 3), (2, 4)], {"dim": 0}, "differ outside dim"),
    ("max_pool2d", [(1, 1, 2, 2)], {"kernel": [3, 3], "stride": [1, 1], "padding": [0, 0]}, "empty"),
    ("scaled_dot_product_attention", [(1, 4, 5, 8), (1, 3, 5, 8), (1, 3, 5, 8), None],
     {"scale": 1.0, "enable_gqa": True}, "divisor"),
    ("rotary_embedding", [(1, 4, 5, 7), (1, 1, 5, 7), (1, 1, 5, 7)], {}, "even last axis"),
    ("rotary_embedding", [(1, 4, 5, 8), (1, 2, 5, 8), (1, 1, 5, 8)], {}, "cos .* does not broadcast"),
    ("rotary_embedding", [(4, 5, 8), (1, 1, 5, 8), (5, 8)], {}, "cos .* does not broadcast"),
    ("softmax", [(2, 3)], {"dim": "1"}, "must be an integer"),
    ("full", [], {"shape": [2, 2], "value": "x", "dtype": "float32"}, "must be a number"),
    ("arange", [], {"start": 0, "end": 5, "step": 0, "dtype": "int64"}, "no finite range"),
    ("add", [(2, 3), (4, 3)], {}, "do not broadcast"),
    ("nonexistent", [], {}, "no shape rule"),
])
def test_rules_refuse_what_aten_refuses(op, ins, attrs, message):
    with pytest.raises(ShapeError, match=message):
        infer(op, ins, [None] * len(ins), attrs)


def test_defaults_are_written_for_the_kernel():
    attrs = {"dim": 1}
    assert infer("slice", [(2, 7)], [None], attrs) == [((2, 7), None)]
    assert attrs == {"dim": 1, "start": 0, "end": 7, "step": 1}


def test_broadcast():
    assert broadcast((2, 1, 3), (4, 1), ()) == (2, 4, 3)


def test_rotary_embedding_takes_float32_only():
    """The rotary kernel computes in float32: another dtype for x, cos or sin is refused by name."""
    shapes = [(1, 2, 3, 4), (1, 1, 3, 4), (1, 1, 3, 4)]
    assert infer("rotary_embedding", shapes, ["float32"] * 3, {}) == [((1, 2, 3, 4), "float32")]
    for k, name in enumerate(("x", "cos", "sin")):
        dts = ["float32"] * 3
        dts[k] = "float64" if k else "int64"
        with pytest.raises(ShapeError, match=f"{name} is {dts[k]}, not float32"):
            infer("rotary_embedding", shapes, dts, {})
