"""The registry itself (kept apart so kernel modules can import the decorators)."""
from __future__ import annotations

from typing import Callable

from nac.format.ops import VIEW_OPS  # noqa: F401  (re-exported: the op table says which ops are views)

KERNELS: dict[str, Callable] = {}
#: op -> ``bind(ins, outs, attrs)``: the step's call with its arguments worked out once (see `binder`)
BINDERS: dict[str, Callable] = {}
#: (op, next op) -> ``bind(ins, outs, attrs, ins2, outs2, attrs2)``: one call for two consecutive
#: steps (see `pair_binder`)
PAIR_BINDERS: dict[tuple[str, str], Callable] = {}


def _register(table: dict, what: str, ops: tuple):
    def deco(fn):
        for op in ops:
            if op in table:
                raise ValueError(f"{what} for {op!r} registered twice")
            table[op] = fn
        return fn
    return deco


def kernel(*ops: str):
    """Register the decorated function as the kernel of each op in ``ops``.

    Raises: ValueError (at import) if an op already has one."""
    return _register(KERNELS, "kernel", ops)


def binder(*ops: str):
    """Register the decorated ``bind(ins, outs, attrs) -> call or None`` for each op in ``ops``;
    the plan passes ``ins`` with one entry per input the op takes (`nac.format.ops.operands`:
    None for an absent optional one).

    A plan's arrays never move (its arena, inputs and constants are allocated once), so what a
    kernel derives from their shapes, strides and addresses alone (row views, packed weights,
    broadcast views, work splits) can be derived once, when the plan is built: ``bind`` returns a
    no-argument callable that does what ``kernel(ins, outs, attrs)`` would, or None where it
    cannot (the plan then calls the kernel). A decode step runs ~400 kernels of a few
    microseconds each, so the Python that this saves is a measurable part of a token.

    Raises: ValueError (at import) if an op already has one."""
    return _register(BINDERS, "binder", ops)


def pair_binder(first: str, second: str):
    """Register the decorated ``bind(ins, outs, attrs, ins2, outs2, attrs2) -> call or None`` for
    two consecutive steps of ops ``first`` and ``second`` where the second reads the first's
    only output as its first input and nothing else reads it (no other node, no view, not a
    graph output). The call computes the second step's outputs from the first step's inputs
    without writing the first step's output (a fused pair, `nac.engine.plan.Step.fused_into`);
    None where it cannot (each step keeps its own call). ``ins`` as for `binder`.

    Raises: ValueError (at import) if the pair already has one."""
    return _register(PAIR_BINDERS, "pair binder", ((first, second),))
