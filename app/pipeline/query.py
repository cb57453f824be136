"""The query parameters of the image endpoints: each one defined once, with its default, limits and wording.

Every transport reads its parameters through :func:`parse_query` (a query string) or
:func:`query_from_values` (already split values, as the Open Inference Protocol sends them), and the
OpenAPI page declares them from :data:`PARAMETERS`. Adding a parameter means one :class:`Parameter`
entry, one field on :class:`Query`, and the code that uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qsl

from app.engine.work import MapKind
from app.errors import InvalidParameter
from app.pipeline.imaging import Colormap

Operation = Literal["predict", "attention-map"]
PATHS: dict[str, Operation] = {"/predict": "predict", "/attention-map": "attention-map"}
MAP_KINDS: tuple[MapKind, ...] = ("evidence", "attention")
COLORMAPS: tuple[Colormap, ...] = ("turbo", "viridis")
ECHO_MAX_CHARS = 200  # an error message quotes at most this much of what the client sent
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True, slots=True)
class Query:
    """What the client asked of one request; the defaults are the API's defaults."""

    top_k: int = 5
    target: str | None = None  # a label of the model; None explains the top class
    kind: MapKind = "evidence"
    overlay: bool = False
    colormap: Colormap = "turbo"
    include_grid: bool = False


DEFAULT_QUERY = Query()


def quote(value: str) -> str:
    """``value`` for an error message: repr'd, and cut to :data:`ECHO_MAX_CHARS` characters."""
    if len(value) > ECHO_MAX_CHARS:
        return repr(value[:ECHO_MAX_CHARS]) + f"… ({len(value)} characters)"
    return repr(value)


@dataclass(frozen=True, slots=True)
class Parameter:
    """One query parameter: how it reads, what it accepts (for the error and OpenAPI), where it applies."""

    name: str
    description: str
    operations: tuple[Operation, ...]
    read: Callable[[str, Sequence[str]], Any]  # (text, labels) → value; raises ValueError when invalid
    expected: Callable[[Sequence[str]], str]  # what a valid value is, in words, for the error message
    schema: Callable[[Sequence[str]], dict[str, Any]] = field(repr=False)


def _integer_in(low: int, high: Callable[[Sequence[str]], int]) -> Callable[[str, Sequence[str]], int]:
    def read(text: str, labels: Sequence[str]) -> int:
        digits = text.removeprefix("+")
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 9:
            raise ValueError
        value = int(digits)
        if not low <= value <= high(labels):
            raise ValueError
        return value

    return read


def _one_of(choices: Callable[[Sequence[str]], Sequence[str]]) -> Callable[[str, Sequence[str]], str]:
    def read(text: str, labels: Sequence[str]) -> str:
        if text not in choices(labels):
            raise ValueError
        return text

    return read


def _boolean(text: str, _: Sequence[str]) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError


def _listed(values: Sequence[str]) -> str:
    return ", ".join(repr(value) for value in values)


BOTH: tuple[Operation, ...] = ("predict", "attention-map")
MAPS: tuple[Operation, ...] = ("attention-map",)
PARAMETERS: dict[str, Parameter] = {
    parameter.name: parameter
    for parameter in (
        Parameter(
            "top_k",
            "How many classes to return, highest probability first.",
            BOTH,
            _integer_in(1, len),
            lambda labels: f"a whole number from 1 to {len(labels)}",
            lambda labels: {"type": "integer", "minimum": 1, "maximum": len(labels)},
        ),
        Parameter(
            "target",
            "The label whose evidence the map shows; default: the top class.",
            MAPS,
            _one_of(lambda labels: labels),
            lambda labels: f"one of the model's labels ({_listed(labels)})",
            lambda labels: {"type": "string", "enum": list(labels)},
        ),
        Parameter(
            "kind",
            "`evidence` for the target class, or the raw `attention` weights.",
            MAPS,
            _one_of(lambda _: MAP_KINDS),
            lambda _: f"one of {_listed(MAP_KINDS)}",
            lambda _: {"type": "string", "enum": list(MAP_KINDS)},
        ),
        Parameter(
            "overlay",
            "Also return the heatmap blended over the input, as an RGB PNG.",
            MAPS,
            _boolean,
            lambda _: "true or false",
            lambda _: {"type": "boolean"},
        ),
        Parameter(
            "colormap",
            "Colormap of the overlay.",
            MAPS,
            _one_of(lambda _: COLORMAPS),
            lambda _: f"one of {_listed(COLORMAPS)}",
            lambda _: {"type": "string", "enum": list(COLORMAPS)},
        ),
        Parameter(
            "include_grid",
            "Also return the raw map over the feature grid, as numbers.",
            MAPS,
            _boolean,
            lambda _: "true or false",
            lambda _: {"type": "boolean"},
        ),
    )
}


def parse_query(query_string: bytes, operation: Operation, labels: Sequence[str]) -> Query:
    """The request's parameters, or :class:`InvalidParameter` worded the one way for every transport.

    Raises:
        InvalidParameter: A value out of range, an unknown or a repeated parameter.
    """
    if not query_string:
        return DEFAULT_QUERY
    try:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, max_num_fields=64)
    except ValueError as exc:  # more fields than any valid query has
        raise InvalidParameter("too many query parameters") from exc
    return query_from_values(pairs, operation, labels)


def query_from_values(pairs: Iterable[tuple[str, str]], operation: Operation, labels: Sequence[str]) -> Query:
    """:func:`parse_query` over (name, text) pairs."""
    values: dict[str, Any] = {}
    for name, text in pairs:
        parameter = PARAMETERS.get(name)
        if parameter is None or operation not in parameter.operations:
            allowed = ", ".join(p.name for p in PARAMETERS.values() if operation in p.operations)
            raise InvalidParameter(f"unknown parameter {quote(name)}; /{operation} takes {allowed}")
        if name in values:
            raise InvalidParameter(f"{name} is given more than once")
        try:
            values[name] = parameter.read(text, labels)
        except ValueError:
            raise InvalidParameter(
                f"{name} must be {parameter.expected(labels)}, got {quote(text)}"
            ) from None
    return replace(DEFAULT_QUERY, **values) if values else DEFAULT_QUERY


def openapi_parameters(operation: Operation, labels: Sequence[str]) -> list[dict[str, Any]]:
    """The OpenAPI ``parameters`` of an operation, from the same definitions the parser uses."""
    return [
        {
            "name": parameter.name,
            "in": "query",
            "required": False,
            "description": parameter.description,
            "schema": _with_default(parameter.schema(labels), getattr(DEFAULT_QUERY, parameter.name)),
        }
        for parameter in PARAMETERS.values()
        if operation in parameter.operations
    ]


def _with_default(schema: dict[str, Any], default: Any) -> dict[str, Any]:
    """The schema with the :class:`Query` default, the one place defaults are written."""
    return schema if default is None else {**schema, "default": default}
