"""Safe arithmetic for the model: an AST walker over numbers, + - * / // % **, and a few math functions.

Never ``eval``: the expression is parsed by `ast` and only number literals,
the operators above, ``pi``/``e`` and the functions in `FUNCTIONS` are
walked; anything else (names, attributes, subscripts, comprehensions,
strings) is refused. Sizes are bounded before they are computed (``9**9**9``
is refused, not attempted), so one call cannot hold the replica.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from business_modules.agents.ports import ToolFailed
from business_modules.agents.tools.base import Tool, ToolContext

MAX_EXPRESSION_CHARS = 200
MAX_NODES = 100
MAX_MAGNITUDE = 1e300
MAX_ARGS = 20

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _round(x: Number, digits: Number = 0) -> Number:
    if not isinstance(digits, int) or not -20 <= digits <= 20:
        raise ArithmeticError("round's digits must be a whole number from -20 to 20")
    return round(x, digits) if digits else round(x)


def _log(x: Number, base: Number | None = None) -> float:
    if x <= 0 or (base is not None and (base <= 0 or base == 1)):
        raise ArithmeticError("log needs a positive number (and a positive base other than 1)")
    return math.log(x) if base is None else math.log(x, base)


def _sqrt(x: Number) -> float:
    if x < 0:
        raise ArithmeticError("sqrt of a negative number")
    return math.sqrt(x)


def _exp(x: Number) -> float:
    if x > 690:
        raise ArithmeticError("exp of that is too large")
    return math.exp(x)


FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "abs": (abs, 1, 1), "round": (_round, 1, 2), "min": (min, 1, MAX_ARGS), "max": (max, 1, MAX_ARGS),
    "sqrt": (_sqrt, 1, 1), "floor": (math.floor, 1, 1), "ceil": (math.ceil, 1, 1), "log": (_log, 1, 2),
    "log10": (lambda x: _log(x, 10), 1, 1), "exp": (_exp, 1, 1),
}
"""name -> (function, fewest arguments, most arguments)."""


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; ArithmeticError says why it has none."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ArithmeticError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ArithmeticError(f"not an arithmetic expression ({exc.msg})") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ArithmeticError(f"the expression has more than {MAX_NODES} parts")
    return _checked(_walk(tree.body))


def _walk(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ArithmeticError(f"{node.value!r} is not a number")
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id not in CONSTANTS:
            raise ArithmeticError(f"unknown name {node.id!r}; known constants: {', '.join(CONSTANTS)}")
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_walk(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ArithmeticError("division by zero") from None
        except OverflowError:
            raise ArithmeticError("the result is too large") from None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id not in FUNCTIONS:
            raise ArithmeticError(f"unknown function {node.func.id!r}; known: {', '.join(FUNCTIONS)}")
        return _call(node.func.id, [_walk(arg) for arg in node.args])
    raise ArithmeticError(f"{type(node).__name__} is not allowed: only numbers, + - * / // % **, parentheses, "
                          f"{', '.join(CONSTANTS)} and {', '.join(FUNCTIONS)}()")


def _call(name: str, args: list[Number]) -> Number:
    function, fewest, most = FUNCTIONS[name]
    if not fewest <= len(args) <= most:
        raise ArithmeticError(f"{name}() takes {fewest}{'' if fewest == most else f' to {most}'} argument(s)")
    try:
        return _checked(function(*args))
    except (ValueError, OverflowError) as exc:
        raise ArithmeticError(f"{name}(): {exc}") from None


def _check_power(base: Number, exponent: Number) -> None:
    if base == 0 and exponent < 0:
        raise ArithmeticError("division by zero")
    if isinstance(base, (int, float)) and base < 0 and isinstance(exponent, float) and not exponent.is_integer():
        raise ArithmeticError("a negative number to a fractional power has no real value")
    if abs(base) > 1 and abs(exponent) * math.log10(abs(base)) > 300:
        raise ArithmeticError("the result is too large")
    if abs(exponent) > 10_000:
        raise ArithmeticError("the exponent is too large")


def _checked(value: Number) -> Number:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        raise ArithmeticError("the result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise ArithmeticError("the result is too large")
    return value


class CalculateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expression: str = Field(min_length=1, max_length=MAX_EXPRESSION_CHARS)


class Calculate(Tool):
    name = "calculate"
    description = "Arithmetic, e.g. round((1200*0.15+2**3)/7,2); + - * / // % ** abs min max sqrt floor ceil log exp pi"
    args_model = CalculateArgs

    async def run(self, args: CalculateArgs, ctx: ToolContext) -> dict[str, Any]:
        try:
            value = evaluate(args.expression)
        except ArithmeticError as exc:
            raise ToolFailed(str(exc)) from None
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        return {"expression": args.expression, "value": value}
