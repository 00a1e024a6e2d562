"""Symbolic dimensions: small integer expressions over named dimensions (``"batch"``,
``"seq * 2"``, ``"max(1, seq - 1)"``) stored as text in the graph and evaluated at run time.

The exporter writes them; the engine evaluates them with `eval_dim` once per input-shape
signature. Evaluation parses the text with :mod:`ast` and walks a whitelist of node types
(integers, names, ``+ - * // %``, unary minus, ``max``/``min``), so nothing from a file is ever
executed as code.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from typing import Mapping, Union

from nac.errors import NacFormatError, NacInputError

Dim = Union[int, str]  # a static size, or an expression over named dimensions

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
_CALLS = {"max": max, "min": min}


MAX_TEXT = 1024  # characters in one expression
MAX_DEPTH = 64  # nesting of operators and calls


def _depth(node: ast.AST, limit: int) -> int:
    """Nesting depth of ``node``, walked without recursion; stops counting past ``limit``."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        stack.extend((c, d + 1) for c in ast.iter_child_nodes(n))
    return deepest


@lru_cache(maxsize=4096)
def parse_dim(text: str) -> ast.expr:
    """Parse a dimension expression into an AST after checking every node is allowed.

    Raises:
        NacFormatError: the text is not a valid dimension expression: not a string, longer than
            `MAX_TEXT` characters, nested deeper than `MAX_DEPTH`, or using anything but integers,
            names, ``+ - * // %``, unary minus and ``max``/``min`` of two or more arguments.
    """
    if not isinstance(text, str):
        raise NacFormatError(f"invalid dimension {text!r}: not an integer or an expression")
    if len(text) > MAX_TEXT:
        raise NacFormatError(f"invalid dimension expression {text[:40]!r}…: longer than {MAX_TEXT} characters")
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise NacFormatError(f"invalid dimension expression {text!r}: {getattr(exc, 'msg', exc)}") from None
    if _depth(tree, MAX_DEPTH) > MAX_DEPTH:
        raise NacFormatError(f"invalid dimension expression {text[:40]!r}…: nested deeper than {MAX_DEPTH}")
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Constant, ast.Name, ast.BinOp, ast.UnaryOp, ast.Call, ast.Load,
                               ast.USub, *_BINOPS))
        if isinstance(node, ast.Constant) and not isinstance(node.value, int):
            ok = False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _CALLS
                                               and not node.keywords and len(node.args) >= 2):
            ok = False
        if not ok:
            raise NacFormatError(f"invalid dimension expression {text!r}: {type(node).__name__} not allowed")
    return tree


def symbols_of(dim: Dim) -> set[str]:
    """The named dimensions a dimension refers to (empty for a static size)."""
    if isinstance(dim, int):
        return set()
    return {n.id for n in ast.walk(parse_dim(dim)) if isinstance(n, ast.Name) and n.id not in _CALLS}


def eval_dim(dim: Dim, env: Mapping[str, int]) -> int:
    """Evaluate a dimension for bound named dimensions.

    Args:
        dim: an ``int`` (returned as is) or an expression string.
        env: values of the named dimensions, e.g. ``{"batch": 2, "seq": 16}``.
    Returns:
        The size as a Python ``int``.
    Raises:
        NacInputError: the expression names a dimension that ``env`` does not bind.
        NacFormatError: the expression is malformed, or divides by zero for ``env``.
    """
    if isinstance(dim, int):
        return dim
    return _eval(parse_dim(dim), env, dim)


def _eval(node: ast.expr, env: Mapping[str, int], text: str) -> int:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        try:
            return int(env[node.id])
        except KeyError:
            raise NacInputError(f"dimension {node.id!r} (in {text!r}) is not bound by the inputs") from None
    if isinstance(node, ast.UnaryOp):
        return -_eval(node.operand, env, text)
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, env, text), _eval(node.right, env, text)
        if b == 0 and isinstance(node.op, (ast.FloorDiv, ast.Mod)):
            raise NacFormatError(f"dimension expression {text!r} divides by zero for {dict(env)}")
        return _BINOPS[type(node.op)](a, b)
    # ast.Call, checked by parse_dim
    return _CALLS[node.func.id](*(_eval(a, env, text) for a in node.args))


def eval_shape(shape, env: Mapping[str, int]) -> tuple[int, ...]:
    """Evaluate every dimension of a shape; see `eval_dim`."""
    return tuple(eval_dim(d, env) for d in shape)
