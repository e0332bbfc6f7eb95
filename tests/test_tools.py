"""Built-in tools: exact arithmetic without eval, time zones, unit conversion."""

import pytest

from loom.graphs.tools import all_tools, calculator, convert_units, current_time, evaluate


@pytest.mark.parametrize("expression, expected", [
    ("2137*19", 40603), ("(1+2)**10 % 7", 59049 % 7), ("2^10", 1024), ("sqrt(16)", 4), ("7/2", 3.5),
    ("-3 + +4", 1), ("max(1, 5, 3)", 5), ("round(pi, 3)", 3.142), ("factorial(5)", 120),
])
def test_calculator_evaluates(expression, expected):
    assert evaluate(expression) == expected


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('true')", "unsupported"), ("open('/etc/passwd')", "unsupported"),
    ("9**9**9", "too large"), ("1 +", "not an arithmetic expression"), ("x + 1", "unsupported"),
    ("(lambda: 1)()", "unsupported"),
])
def test_calculator_refuses_anything_else(expression, message):
    with pytest.raises(ValueError, match=message):
        evaluate(expression)


def test_calculator_tool_returns_text():
    assert calculator.invoke({"expression": "6*7"}) == "42"
    with pytest.raises(ZeroDivisionError):
        calculator.invoke({"expression": "1/0"})


def test_current_time_in_a_timezone():
    assert "Asia/Tokyo" in current_time.invoke({"timezone": "Asia/Tokyo"})
    with pytest.raises(ValueError, match="unknown timezone"):
        current_time.invoke({"timezone": "Mars/Olympus"})


@pytest.mark.parametrize("value, source, target, expected", [
    (5, "km", "mi", "3.10686"), (212, "F", "C", "100"), (1, "GiB", "MB", "1073.74"), (100, "km/h", "mph", "62.1371"),
    (1, "lb", "g", "453.592"), (0, "celsius", "kelvin", "273.15"),
])
def test_convert_units(value, source, target, expected):
    assert convert_units.invoke({"value": value, "from_unit": source, "to_unit": target}).endswith(
        f"= {expected} {target}")


def test_convert_units_explains_mistakes():
    with pytest.raises(ValueError, match="cannot convert length"):
        convert_units.invoke({"value": 1, "from_unit": "km", "to_unit": "kg"})
    with pytest.raises(ValueError, match="unknown unit 'furlongs'"):
        convert_units.invoke({"value": 1, "from_unit": "furlongs", "to_unit": "m"})


def test_extra_tool_modules_are_added():
    assert {"calculator", "slow_lookup", "delete_records"} <= set(all_tools("tests.fixture_tools"))
