"""Typed settings: the value types of params.yaml with their constraints, and the builder
that reads a mapping into a frozen dataclass of them (or says which dotted key is wrong).

The lowest layer of the package: it imports nothing of it, and no torch. The specs of
pipeline/config.py, the methods' settings and the architectures' options are all declared
with these types, so each range is written once and `build` checks it and `type_schema`
writes it into the JSON schema.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal


class ParamsError(ValueError):
    """A problem in params.yaml; the message starts with the dotted key at fault."""


@dataclass(frozen=True)
class Within:
    """A range written as in mathematics, "[0, 1)" or "(0, inf)": declared once on a field's
    type (see the aliases below), checked by `build` and written into the JSON schema."""

    text: str

    @functools.cached_property
    def bounds(self) -> tuple[float, float, bool, bool]:
        """(low, high, low included, high included)."""
        match = re.fullmatch(r"([\[(])(.+),(.+)([\])])", self.text.replace(" ", ""))
        if match is None:
            raise ValueError(f"not a range: {self.text!r}")
        left, low, high, right = match.groups()
        return float(low), float(high), left == "[", right == "]"

    @property
    def rule(self) -> str:
        """What a value must be: ">= 1", "> 0" or "in [0, 1)"."""
        low, high, low_in, _ = self.bounds
        if high == math.inf:
            return f"{'>=' if low_in else '>'} {_number(low)}"
        return f"in {self.text}"

    def holds(self, value: float) -> bool:
        low, high, low_in, high_in = self.bounds
        above = value >= low if low_in else value > low
        below = value <= high if high_in else value < high
        return above and below

    def schema(self) -> dict:
        low, high, low_in, high_in = self.bounds
        out = {}
        if math.isfinite(low):
            out["minimum" if low_in else "exclusiveMinimum"] = _number(low)
        if math.isfinite(high):
            out["maximum" if high_in else "exclusiveMaximum"] = _number(high)
        return out


@dataclass(frozen=True)
class Form:
    """An integer of the form mod * n + rest with n >= 1 (a ResNet's depth, say)."""

    mod: int
    rest: int

    def holds(self, value: int) -> bool:
        return value > self.rest and (value - self.rest) % self.mod == 0

    @property
    def rule(self) -> str:
        examples = ", ".join(str(self.mod * n + self.rest) for n in (1, 2, 3))
        return f"of the form {self.mod}n+{self.rest} with n >= 1 ({examples}, ...)"

    def schema(self) -> dict:
        return {"minimum": self.mod + self.rest}


INCREASING = "increasing"  # marks a tuple whose items must strictly increase
# Every integer setting ends up in a torch or numpy int64 (sizes, steps, seeds), where a
# larger one overflows: refused whatever its field's own range says.
LARGEST_INT = 2**63 - 1

# The value types of params.yaml, each constraint declared once here.
PositiveInt = Annotated[int, Within("[1, inf)")]
NonNegativeInt = Annotated[int, Within("[0, inf)")]
Positive = Annotated[float, Within("(0, inf)")]
NonNegative = Annotated[float, Within("[0, inf)")]
Fraction = Annotated[float, Within("[0, 1]")]
FractionBelow1 = Annotated[float, Within("[0, 1)")]  # momentum, betas, dropout
Share = Annotated[float, Within("(0, 1]")]  # a non-empty part of a whole


def _number(x: float) -> int | float:
    return int(x) if x == int(x) else x


def build(cls: type, data: Any, where: str, **extra: Any):
    """Build dataclass `cls` from a mapping, checking keys and types; `where` is the key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init} - set(extra)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    hints = hints_of(cls)
    values = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    required = (f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in extra)
    missing = [name for name in required if name not in values]
    if missing:
        raise ParamsError(f"{where}.{missing[0]}: required (missing: {', '.join(missing)})")
    obj = cls(**values, **extra)
    check = getattr(obj, "check", None)
    if check:
        check(where)
    return obj


def _required(f: dataclasses.Field) -> bool:
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return f.init and no_default


def hints_of(obj: Any) -> dict[str, Any]:
    """The annotations of a class or function, constraints (Annotated) included."""
    return typing.get_type_hints(obj, include_extras=True)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` read as type `hint` (a list becomes a tuple, an int a float), or ParamsError
    naming `where` when it is of another type or breaks a declared constraint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        if args[0] is int and type(value) is int:  # a field's own range before the int64 one
            _check_rules(value, args[1:], where)
        value = coerce(value, args[0], where)
        _check_rules(value, args[1:], where)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ParamsError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(
            coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{where}: must be a finite number, got {value}")
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ParamsError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and not -LARGEST_INT <= value <= LARGEST_INT:
        raise ParamsError(f"{where}: must be at most {LARGEST_INT} in size (a 64-bit integer)")
    return value


def _check_rules(value: Any, rules: tuple, where: str) -> None:
    for rule in rules:
        if rule == INCREASING and any(a >= b for a, b in itertools.pairwise(value)):
            raise ParamsError(f"{where}: must increase, got {list(value)}")
        if isinstance(rule, Within | Form) and not rule.holds(value):
            raise ParamsError(f"{where}: must be {rule.rule}, got {value}")


def type_schema(hint: Any) -> dict:
    """The JSON schema of a field type of this module (constraints included)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        out = type_schema(args[0])
        for rule in args[1:]:
            if isinstance(rule, Within | Form):
                out.update(rule.schema())
        return out
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [type_schema(a) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": type_schema(args[0])}
        items = [type_schema(a) for a in args]
        return {"type": "array", "prefixItems": items, "minItems": len(args), "maxItems": len(args)}
    simple = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
    if hint in simple:
        return {"type": simple[hint]}
    return {"type": "object"} if origin is dict or hint is dict else {}


def dataclass_schema(cls: type) -> dict:
    """The JSON schema of a settings dataclass: its fields, no others; those without a
    default required."""
    hints = hints_of(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        properties[f.name] = type_schema(hints[f.name])
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if default is dataclasses.MISSING:
            required.append(f.name)
        elif isinstance(default, int | float | str | bool | tuple):
            properties[f.name]["default"] = list(default) if isinstance(default, tuple) else default
    return {
        "type": "object",
        "additionalProperties": False,
        **({"required": required} if required else {}),
        "properties": properties,
    }
