"""Built-in server-side tools of the `agent` graph.

To add a tool: write a function with LangChain's `@tool` decorator (a docstring the model reads, typed
arguments) and append it to `TOOLS` — or, without touching loom, list modules that define a `TOOLS` list in
`LOOM_EXTRA_TOOLS` (comma-separated import paths). Set `my_tool.metadata = {"needs_confirmation": True}` to make
every call wait for the user's approval (an AG-UI interrupt); the runtime context's `confirm_tools` does the same
for any tool by name.
"""

from __future__ import annotations

import ast
import importlib
import math
import operator
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from langchain_core.tools import BaseTool, tool

# ---------------------------------------------------------------------------------------------- calculator

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    name: getattr(math, name)
    for name in ("sqrt", "sin", "cos", "tan", "asin", "acos", "atan", "exp", "log", "log10", "log2",
                 "floor", "ceil", "factorial", "degrees", "radians")
} | {"abs": abs, "round": round, "min": min, "max": max}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_MAX_EXPONENT = 10_000  # keeps `9**9**9` from pinning a core


def evaluate(expression: str) -> float | int:
    """Evaluate arithmetic from a parsed AST, never `eval`: only numbers, operators, math functions."""

    def walk(node: ast.AST):
        match node:
            case ast.Expression(body=body):
                return walk(body)
            case ast.Constant(value=value) if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
                lhs, rhs = walk(left), walk(right)
                if isinstance(op, ast.Pow) and abs(rhs) > _MAX_EXPONENT:
                    raise ValueError(f"exponent {rhs} is too large (limit {_MAX_EXPONENT})")
                return _BINARY[type(op)](lhs, rhs)
            case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
                return _UNARY[type(op)](walk(operand))
            case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
                return _FUNCTIONS[name](*(walk(a) for a in args))
            case ast.Name(id=name) if name in _CONSTANTS:
                return _CONSTANTS[name]
        raise ValueError(f"unsupported syntax: {ast.unparse(node) if isinstance(node, ast.expr) else node!r}")

    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from exc
    result = walk(tree)
    if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
        return int(result)
    return result


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, e.g. "2137*19", "sqrt(2)/3", "(1+2)**10 % 7".

    Supports + - * / // % ** (or ^), parentheses, pi, e, and sqrt, sin, cos, tan, log, log10, exp, floor,
    ceil, factorial, abs, round, min, max.
    """
    return str(evaluate(expression))


# -------------------------------------------------------------------------------------------- current time


@tool
def current_time(timezone: str = "UTC") -> str:
    """The current date, time and weekday in an IANA timezone such as "Europe/Paris" or "America/New_York"."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {timezone!r}; use an IANA name like 'Europe/Berlin'") from exc
    now = datetime.now(zone)
    return f"{now.isoformat(timespec='seconds')} ({now.strftime('%A')}, {timezone})"


# ------------------------------------------------------------------------------------------ unit conversion

# Each unit as a factor to the dimension's base unit (metre, kilogram, litre, second, metre/second, byte).
_UNITS: dict[str, tuple[str, float]] = {}
for _dimension, _table in {
    "length": {"m": 1, "km": 1e3, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "nm": 1e-9, "mi": 1609.344, "yd": 0.9144,
               "ft": 0.3048, "in": 0.0254, "nmi": 1852},
    "mass": {"kg": 1, "g": 1e-3, "mg": 1e-6, "t": 1e3, "lb": 0.45359237, "oz": 0.028349523125, "st": 6.35029318},
    "volume": {"l": 1, "ml": 1e-3, "m3": 1e3, "gal": 3.785411784, "qt": 0.946352946, "pt": 0.473176473,
               "cup": 0.2365882365, "floz": 0.0295735295625},
    "time": {"s": 1, "ms": 1e-3, "min": 60, "h": 3600, "day": 86400, "week": 604800, "year": 31557600},
    "speed": {"m/s": 1, "km/h": 1 / 3.6, "mph": 0.44704, "kn": 1852 / 3600},
    "data": {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 1024, "mib": 1024**2, "gib": 1024**3,
             "tib": 1024**4},
}.items():
    for _unit, _factor in _table.items():
        _UNITS[_unit] = (_dimension, float(_factor))

_ALIASES = {
    "meter": "m", "meters": "m", "metre": "m", "kilometer": "km", "kilometers": "km", "mile": "mi", "miles": "mi",
    "foot": "ft", "feet": "ft", "inch": "in", "inches": "in", "yard": "yd", "yards": "yd",
    "kilogram": "kg", "kilograms": "kg", "gram": "g", "grams": "g", "pound": "lb", "pounds": "lb", "lbs": "lb",
    "ounce": "oz", "ounces": "oz", "liter": "l", "litre": "l", "liters": "l", "gallon": "gal", "gallons": "gal",
    "second": "s", "seconds": "s", "sec": "s", "minute": "min", "minutes": "min", "hour": "h", "hours": "h",
    "days": "day", "weeks": "week", "years": "year", "kph": "km/h", "knots": "kn",
    "celsius": "c", "°c": "c", "fahrenheit": "f", "°f": "f", "kelvin": "k",
}
_TEMPERATURE_TO_K = {"c": lambda v: v + 273.15, "f": lambda v: (v - 32) * 5 / 9 + 273.15, "k": lambda v: v}
_TEMPERATURE_FROM_K = {"c": lambda v: v - 273.15, "f": lambda v: (v - 273.15) * 9 / 5 + 32, "k": lambda v: v}


def convert(value: float, from_unit: str, to_unit: str) -> float:
    source = _ALIASES.get(from_unit.strip().lower(), from_unit.strip().lower())
    target = _ALIASES.get(to_unit.strip().lower(), to_unit.strip().lower())
    if source in _TEMPERATURE_TO_K and target in _TEMPERATURE_TO_K:
        return _TEMPERATURE_FROM_K[target](_TEMPERATURE_TO_K[source](value))
    for unit, original in ((source, from_unit), (target, to_unit)):
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {original!r}; known: {', '.join(sorted(_UNITS))}, c, f, k")
    (source_dim, source_factor), (target_dim, target_factor) = _UNITS[source], _UNITS[target]
    if source_dim != target_dim:
        raise ValueError(f"cannot convert {source_dim} ({from_unit}) to {target_dim} ({to_unit})")
    return value * source_factor / target_factor


@tool
def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a quantity between units of length, mass, volume, time, speed, data size or temperature.

    Examples: (5, "km", "mi"), (70, "F", "C"), (2, "GiB", "MB"), (100, "km/h", "mph").
    """
    result = convert(value, from_unit, to_unit)
    return f"{value:g} {from_unit} = {result:.6g} {to_unit}"


TOOLS: list[BaseTool] = [calculator, current_time, convert_units]


@lru_cache
def all_tools(extra_modules: str = "") -> dict[str, BaseTool]:
    """Built-in tools plus those of the `LOOM_EXTRA_TOOLS` modules, by name."""
    tools = list(TOOLS)
    for module in filter(None, (m.strip() for m in extra_modules.split(","))):
        tools += importlib.import_module(module).TOOLS
    return {t.name: t for t in tools}


def needs_confirmation(tool_: BaseTool, confirm_tools: list[str]) -> bool:
    return tool_.name in confirm_tools or bool((tool_.metadata or {}).get("needs_confirmation"))
