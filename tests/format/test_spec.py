"""SPEC.md's op table is generated from the op table; every op has a kernel."""
from pathlib import Path

from nac.engine.kernels import KERNELS
from nac.format.ops import OPS, markdown_table
from nac.format.symbolic import eval_dim

SPEC = Path(__file__).resolve().parents[2] / "format" / "SPEC.md"


def test_spec_op_table_in_sync():
    text = SPEC.read_text()
    table = text.split("<!-- op-table:begin -->\n", 1)[1].split("\n<!-- op-table:end -->", 1)[0]
    assert table == markdown_table(), "regenerate SPEC.md's op table: python -m nac.format.ops --write-spec"


def test_every_op_has_a_kernel():
    assert sorted(set(OPS) - set(KERNELS)) == []
    assert sorted(set(KERNELS) - set(OPS)) == []


def test_dimension_expressions():
    env = {"batch": 3, "seq": 10}
    assert eval_dim("(batch * seq)", env) == 30
    assert eval_dim("max(1, seq - 12)", env) == 1
    assert eval_dim("(seq // 3) % 2", env) == 1
    assert eval_dim(-(-7), env) == 7
