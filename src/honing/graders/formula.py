"""A multi grader's ``calculate_output``: an arithmetic expression over the sub-graders' rewards.

Parsed with Python's ``ast`` and checked against a whitelist when the grader is loaded, then evaluated
by walking the tree: never ``eval``. Allowed: numbers, sub-grader names, ``+ - * / **`` (and ``^``,
which OpenAI's formulas use for a power), unary ``+``/``-``, parentheses, and the functions OpenAI lists:
min, max, abs, floor, ceil, exp, sqrt, log. Arithmetic is in floats, so ``10 ** 10 ** 10`` overflows
at once instead of building a huge integer."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence

from honing.graders.core import GraderError


def _pow(base: float, exponent: float) -> float:
    result = base ** exponent
    if isinstance(result, complex):  # a negative base to a fractional power
        raise ValueError(f"{base:g} ** {exponent:g} is not a real number")  # noqa: TRY004 (a math domain error)
    return result


FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    # name: (function, fewest arguments, most arguments or None)
    "min": (lambda *xs: min(xs), 1, None),
    "max": (lambda *xs: max(xs), 1, None),
    "abs": (abs, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),
}
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: _pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_CHARS = 2000
_ALLOWED = ("numbers, grader names, + - * / ** ^, parentheses and "
            + ", ".join(FUNCTIONS))


class FormulaError(ArithmeticError):
    """The formula could not be evaluated for one sample (division by zero, log of 0, overflow)."""


class Formula:
    def __init__(self, text: object, names: Sequence[str], where: str):
        if not isinstance(text, str) or not text.strip():
            raise GraderError(f"{where}: must be a non-empty arithmetic expression")
        if len(text) > MAX_CHARS:
            raise GraderError(f"{where}: longer than {MAX_CHARS} characters")
        self.text = text
        self.where = where
        self.names = tuple(names)
        try:
            # "^" is a power in OpenAI's formulas, with a power's precedence: parse it as "**".
            self.tree = ast.parse(text.strip().replace("^", "**"), mode="eval").body
        except SyntaxError as e:
            raise GraderError(f"{where}: {text!r} is not an arithmetic expression ({e.msg}, column "
                              f"{e.offset})") from None
        except (RecursionError, MemoryError):
            raise GraderError(f"{where}: nested too deeply") from None
        try:
            self._check(self.tree)
        except RecursionError:
            raise GraderError(f"{where}: nested too deeply") from None

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise self._refuse(node, f"the constant {node.value!r} is not a number")
        elif isinstance(node, ast.Name):
            if node.id not in self.names:
                known = ", ".join(self.names) or "none"
                raise self._refuse(node, f"'{node.id}' is not one of the graders ({known})")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise self._refuse(node, f"the operator in '{self._source(node)}' is not allowed")
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                raise self._refuse(node, f"the operator in '{self._source(node)}' is not allowed")
            self._check(node.operand)
        elif isinstance(node, ast.Call):
            self._check_call(node)
        else:
            kind = {ast.Attribute: "attribute access", ast.Subscript: "a subscript"}.get(type(node), "this")
            raise self._refuse(node, f"{kind} ('{self._source(node)}') is not allowed")

    def _check_call(self, node: ast.Call) -> None:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise self._refuse(node, f"'{name or self._source(node.func)}' is not an allowed function "
                                     f"({', '.join(FUNCTIONS)})")
        _, low, high = FUNCTIONS[name]
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self._refuse(node, f"{name}() takes plain arguments only")
        if len(node.args) < low or (high is not None and len(node.args) > high):
            wanted = f"{low}" if low == high else f"{low} or more" if high is None else f"{low} to {high}"
            raise self._refuse(node, f"{name}() takes {wanted} argument(s), not {len(node.args)}")
        for arg in node.args:
            self._check(arg)

    def _source(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text.strip().replace("^", "**"), node) or type(node).__name__

    def _refuse(self, node: ast.AST, why: str) -> GraderError:
        return GraderError(f"{self.where}: {why}; allowed: {_ALLOWED}")

    def names_used(self) -> set[str]:
        return {n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name) and n.id in self.names}

    def evaluate(self, values: dict[str, float]) -> float:
        """The formula's value; FormulaError when it has none (e.g. division by zero)."""
        try:
            result = float(self._eval(self.tree, values))
        except (ArithmeticError, ValueError) as e:  # ZeroDivisionError, OverflowError, math domain error
            raise FormulaError(f"calculate_output {self.text!r}: {type(e).__name__}: {e}") from None
        if not math.isfinite(result):
            raise FormulaError(f"calculate_output {self.text!r} gave {result}")
        return result

    def _eval(self, node: ast.AST, values: dict[str, float]) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(values[node.id])
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, values), self._eval(node.right, values))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, values))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # the only node left after _check
        return float(FUNCTIONS[node.func.id][0](*(self._eval(a, values) for a in node.args)))
