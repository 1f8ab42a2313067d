"""The route table's vocabulary: a route, its parameters, and the one parser that reads them.

A :class:`Route` says everything about an endpoint once: method and path, its parameters
(each :class:`Param` with its default and limits), which key kind it needs, whether it starts
a run, whether browsers may call it (CORS), whether it is logged, and what OpenAPI says of it.
The edge (``flowserve.http.edge``) matches a request to a route and everything else reads the
route: the drain gate, the preflight answer, the access log, the OpenAPI document and the
handler's parsed arguments. There is no second path to keep in step with this one.

Written by hand rather than with FastAPI's routing and parameter solving: those were about a
quarter of the event loop's time on a one-token relay request (bench/RESULTS.md), and the
streaming routes had to bypass them, which put every default and limit in two places. The
errors keep FastAPI's shape and pydantic's wording (``{"detail": [{"loc", "msg", "type"}]}``,
contract 2.2), all of a request's parameter errors in one answer.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from flowserve.errors import ParameterError

if TYPE_CHECKING:
    from flowserve.http.admission import Caller
    from flowserve.http.app import HttpState

REQUIRED: Any = object()
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_INT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would take "١٢"
KeyKind = Literal["any", "private"]
ErrorShape = Literal["flowserve", "openai"]  # how a route's errors read (flowserve.http.errors)
_BOOL = "Input should be a valid boolean, unable to interpret input"
_INT_MSG = "Input should be a valid integer, unable to parse string as an integer"
_NUMBER = "Input should be"


def _chars(n: int) -> str:
    return f"{n} character" if n == 1 else f"{n} characters"


@dataclass(frozen=True, slots=True)
class Param:
    """One path or query parameter: parsed once, its limits checked, its value what is used."""

    name: str
    kind: type = str  # str, int or bool
    where: Literal["query", "path"] = "query"
    default: Any = REQUIRED
    description: str = ""
    min_length: int | None = None
    max_length: int | None = None
    ge: int | None = None
    le: int | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def parse(self, raw: str) -> Any:
        """The value, or ValueError(type, msg) in pydantic's words."""
        if self.kind is bool:
            lowered = raw.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError("bool_parsing", _BOOL)
        if self.kind is int:
            if not _INT.fullmatch(raw):
                raise ValueError("int_parsing", _INT_MSG)
            number = int(raw)
            if self.ge is not None and number < self.ge:
                raise ValueError(
                    "greater_than_equal", f"{_NUMBER} greater than or equal to {self.ge}"
                )
            if self.le is not None and number > self.le:
                raise ValueError("less_than_equal", f"{_NUMBER} less than or equal to {self.le}")
            return number
        if self.min_length is not None and len(raw) < self.min_length:
            raise ValueError(
                "string_too_short", f"String should have at least {_chars(self.min_length)}"
            )
        if self.max_length is not None and len(raw) > self.max_length:
            raise ValueError(
                "string_too_long", f"String should have at most {_chars(self.max_length)}"
            )
        return raw

    def schema(self) -> dict[str, Any]:
        """This parameter in OpenAPI."""
        kind = {str: "string", int: "integer", bool: "boolean"}[self.kind]
        schema: dict[str, Any] = {"type": kind}
        for key, value in (
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
            ("minimum", self.ge),
            ("maximum", self.le),
        ):
            if value is not None:
                schema[key] = value
        if not self.required:
            schema["default"] = self.default
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required,
            "description": self.description,
            "schema": schema,
        }


@dataclass(slots=True)
class Call:
    """What a handler gets: the request, its parsed parameters, and the admitted key."""

    request: Request
    args: dict[str, Any]
    caller: Caller | None  # None for a route that needs no key
    http: HttpState

    @property
    def admitted(self) -> Caller:
        """The caller of a route that needs a key (the edge admitted it)."""
        assert self.caller is not None
        return self.caller


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # with {name} segments for path parameters
    handler: Handler
    summary: str
    tags: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    # None: no key; "any": a public or private key of the org (of the path's {org}; a route
    # without one takes a key of any org, and its handler checks what it names is the key's)
    key: KeyKind | None = "any"
    action: str = ""  # with key="private": what a public key is refused ("publish flows")
    starts_run: bool = False  # refused while draining; answers 404/413/503 (OpenAPI)
    browser: bool = False  # browsers may call it: preflights answered (CORS)
    logged: bool = False  # one access-log line per request
    ok: tuple[int, ...] = (200,)  # its success statuses (OpenAPI)
    body: dict[str, Any] | None = None  # the OpenAPI requestBody
    content: tuple[str, ...] = ("application/json",)  # what a 200 is, for OpenAPI
    errors: tuple[int, ...] = ()  # statuses it may answer besides the ones its flags imply
    description: str = ""
    documented: bool = True  # in the OpenAPI document
    errors_as: ErrorShape = "flowserve"  # "openai": OpenAI's error objects, 400 for 422
    pattern: re.Pattern[str] | None = field(default=None, compare=False)
    shown: frozenset[str] = field(default=frozenset(), compare=False)  # in the access log

    def __post_init__(self) -> None:
        names = frozenset(p.name for p in self.params if p.where == "query")
        object.__setattr__(self, "shown", names)
        if "{" in self.path:
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
            object.__setattr__(self, "pattern", re.compile(regex))

    def parse(self, scope: Mapping[str, Any], path_values: dict[str, str]) -> dict[str, Any]:
        """Every parameter's value, or ParameterError naming each one that is wrong."""
        query: dict[str, str] = {}
        repeated: set[str] = set()
        if scope["query_string"]:
            for name, value in parse_qsl(
                scope["query_string"].decode("latin-1"), keep_blank_values=True
            ):
                if name in query:
                    repeated.add(name)
                query[name] = value
        args: dict[str, Any] = {}
        problems: list[tuple[tuple[str, ...], str, str]] = []
        for param in self.params:
            raw = path_values.get(param.name) if param.where == "path" else query.get(param.name)
            loc = (param.where, param.name)
            if raw is None:
                if param.required:
                    problems.append((loc, "Field required", "missing"))
                else:
                    args[param.name] = param.default
                continue
            if param.name in repeated:  # which one would count is anybody's guess: neither
                problems.append((loc, "given more than once", "repeated"))
                continue
            try:
                args[param.name] = param.parse(raw)
            except ValueError as exc:
                kind, msg = exc.args
                problems.append((loc, msg, kind))
        if problems:
            raise ParameterError(problems)
        return args


class RouteTable:
    """The routes, matched by path then method. Paths without parameters are one dict
    lookup; the others are tried in the table's order (the hot streaming routes first)."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._static: dict[str, dict[str, Route]] = {}
        self._dynamic: list[Route] = []
        for route in routes:
            if route.pattern is None:
                methods = self._static.setdefault(route.path, {})
                assert route.method not in methods, f"{route.method} {route.path} twice"
                methods[route.method] = route
            else:
                self._dynamic.append(route)

    def match(self, method: str, path: str) -> tuple[dict[str, Route], dict[str, str]] | None:
        """The routes at ``path`` by method, with the path's parameter values; None if no
        route has this path."""
        static = self._static.get(path)
        if static is not None:
            return static, {}
        found: dict[str, Route] = {}
        values: dict[str, str] = {}
        for route in self._dynamic:
            assert route.pattern is not None
            matched = route.pattern.fullmatch(path)
            if matched is not None:
                found.setdefault(route.method, route)
                if route.method == method:
                    return found, matched.groupdict()
                values = values or matched.groupdict()
        return (found, values) if found else None
