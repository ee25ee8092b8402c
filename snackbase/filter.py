"""The filter and sort language (SPEC section 6), compiled to SQL fragments with bound parameters.

Design
------
* Pure: stdlib (and the dialect table). Text goes in, ``(sql, params)`` comes out. The module knows no
  schema: every identifier reaches SQL through ``Resolver.field`` (which whitelists and quotes names),
  every value through a ``?`` parameter. The only SQL text written here is a fixed set of keywords,
  operators and parentheses, so no byte of user text can reach the SQL string.
* Two stages. ``parse`` (one compiled regex as tokenizer + recursive descent) builds an immutable AST
  and is cached by text, because the same rule and filter texts recur on every request.
  ``compile_node`` turns the AST into SQL per call, because fields, ``@request.*`` values and
  ``@now`` depend on the caller.
* Limits (length, terms, nesting) are checked while parsing, so hostile input costs linear time and
  can never reach ``RecursionError``.
* SQLite's SQL; where PostgreSQL spells a word differently (``0``/``FALSE``, ``IS NOT``/``IS DISTINCT
  FROM``, ``LIKE``/``ILIKE``, the NULL order of a sort) the word comes from the current dialect
  (``snackbase/backends/dialect.py``), the same on SQLite as before.

NULL semantics (SQL's three-valued logic is hidden; every filter behaves two-valued)
----------------------------------------------------------------------------------
* ``a = null`` / ``a != null`` compile to ``IS NULL`` / ``IS NOT NULL``.
* ``a != b`` compiles to ``a IS NOT b``, so ``status != "x"`` includes rows whose status is NULL.
* Negations (``!``, ``!~``, ``NOT IN``) are true whenever the positive form is not true: where the
  inner SQL may yield NULL it is wrapped as ``NOT COALESCE(inner, 0)``.
* ``IN (…, null)`` also matches NULL (``(a IN (…) OR a IS NULL)``).
* A comparison (or a macro call) involving a *missing* ``@request.auth.*`` / ``@request.data.*``
  value compiles to the constant ``0`` (false), never to an error — hence ``!(…)`` of it is true.
  A present value of ``None`` is bound as NULL (``a = @request.auth.x`` then never matches);
  only the ``null`` literal turns ``=`` into ``IS NULL``, so a resolver returning ``None`` for an
  anonymous caller cannot make ``owner = @request.auth.id`` match every unowned row.
"""

from __future__ import annotations

import datetime
import enum
import functools
import json
import re
from typing import Final, NamedTuple, NoReturn, Protocol, cast

import msgspec

from snackbase.backends import dialect
from snackbase.backends.dialect import Dialect

MAX_LENGTH: Final = 3500
MAX_TERMS: Final = 64
MAX_DEPTH: Final = 32
MAX_SORT_ITEMS: Final = 32
# `~` bounds: one SQLite LIKE or instr() call is a single VM instruction, which the statement budget's
# progress handler cannot interrupt, so the work of each call is bounded by the size of its pattern
# (measured on a 1 MB text: instr with 256 characters ~25 ms; LIKE with 64 characters ≤ ~270 ms,
# SQLite's LIKE compares character by character), and each row first calls `sb_budget(size)`, which
# stops the statement once it is over budget (db.StatementBudget.check).
MAX_LIKE_PATTERN: Final = 256
MAX_LIKE_WILDCARD_PATTERN: Final = 64
MAX_LIKE_WILDCARDS: Final = 8
# Texts this short skip the per-row `sb_budget()` call: their match costs microseconds (≤ ~17 µs for
# the costliest pattern), so the progress handler's checks every PROGRESS_STEPS VM steps (~1,500
# rows) bound them to ~30 ms, and calling into Python for each short row made a `~` scan ~3x slower.
SMALL_MATCH_BYTES: Final = 64

# Sort keys that are not fields; the resolver gives them meaning (`@rank`: full-text search rank).
SORT_VARIABLES: Final = frozenset({"@rank"})


class FilterError(Exception):
    """A filter or sort text the compiler refuses; `position` is a 0-based offset into that text."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at position {position})")
        self.message = message
        self.position = position

    def __reduce__(self) -> tuple[type[FilterError], tuple[str, int]]:
        return (FilterError, (self.message, self.position))


class _Missing(enum.Enum):
    MISSING = "MISSING"


MISSING: Final = _Missing.MISSING


class Resolver(Protocol):
    """Everything the compiler needs from the caller: whitelisted fields, request values, macros."""

    def field(self, name: str, position: int) -> str: ...
    def request_auth(self, name: str) -> object: ...
    def request_data(self, name: str) -> object: ...
    def macro(self, name: str, args: list[object], position: int) -> tuple[str, list[object]]: ...
    def now(self) -> str: ...


class TypedResolver(Resolver, Protocol):
    """A resolver that also knows field types: literals compared with `date`/`datetime` fields are then
    normalised to the stored format (so they compare as instants, not as text)."""

    def field_type(self, name: str) -> str | None: ...


# ---------------------------------------------------------------------------------------------- AST


class Field(msgspec.Struct, frozen=True):
    name: str
    position: int


class Literal(msgspec.Struct, frozen=True):
    value: str | int | float | bool | None


class RequestValue(msgspec.Struct, frozen=True):
    source: str  # "auth" or "data"
    name: str


class Now(msgspec.Struct, frozen=True):
    pass


class Macro(msgspec.Struct, frozen=True):
    name: str
    args: tuple[Literal | RequestValue, ...]
    position: int


class Column(msgspec.Struct, frozen=True):
    """SQL a resolver hook built for the values of a multi-valued path (see `any_of`); never parsed."""

    sql: str


class Compare(msgspec.Struct, frozen=True):
    op: str
    left: Operand
    right: Operand
    position: int = 0  # of the operator, for error messages; not part of the comparison's identity

    def __eq__(self, other: object) -> bool:
        if type(other) is not Compare:
            return NotImplemented
        return (self.op, self.left, self.right) == (other.op, other.left, other.right)

    def __hash__(self) -> int:
        return hash((self.op, self.left, self.right))


class InList(msgspec.Struct, frozen=True):
    operand: Operand
    values: tuple[str | int | float | bool | None, ...]
    negated: bool


class IsNull(msgspec.Struct, frozen=True):
    operand: Operand
    negated: bool


class Not(msgspec.Struct, frozen=True):
    operand: Node


class And(msgspec.Struct, frozen=True):
    items: tuple[Node, ...]


class Or(msgspec.Struct, frozen=True):
    items: tuple[Node, ...]


Operand = Field | Literal | RequestValue | Now | Macro
Node = And | Or | Not | Compare | InList | IsNull | Macro

# ------------------------------------------------------------------------------------------ tokens

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_TOKEN_RE = re.compile(
    rf"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<num>-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<name>{_NAME})
  | (?P<var>@{_NAME})
  | (?P<op>\?(?:!=|!~|>=|<=|[=<>~])|&&|\|\||!=|!~|>=|<=|[=<>~!(),])
  | (?P<quote>["'])
    """,
    re.VERBOSE | re.DOTALL,
)
_NAME_RE = re.compile(_NAME)
_STRING_ESCAPE_RE = re.compile(r"""\\(["'\\])""")
_KEYWORDS: Final = frozenset({"not", "in", "is", "null", "true", "false"})
_WORD_OPS: Final = {"and": "&&", "or": "||"}
_COMPARE_OPS: Final = frozenset({"=", "!=", ">", ">=", "<", "<=", "~", "!~"})
# Any-of operators: true when ANY of the values a multi-valued path names (a back-relation, a
# multi-reference) compares true. On a single-valued name they are the plain operator.
ANY_OF_OPS: Final = frozenset("?" + op for op in _COMPARE_OPS)
_INT64: Final = 2**63


class _Token(NamedTuple):
    kind: str  # str num name var op kw end error
    value: object
    pos: int
    raw: str


def _tokenize(text: str) -> list[_Token]:
    """All tokens up to the end, or up to an `error` token that the parser raises when it reaches it
    (so errors are reported in text order, not tokenizer-first)."""
    tokens: list[_Token] = []
    pos, end, match = 0, len(text), _TOKEN_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            return [*tokens, _Token("error", f"unexpected character {text[pos]!r}", pos, "")]
        kind, raw = m.lastgroup or "", m.group()
        if kind == "quote":
            return [*tokens, _Token("error", "unterminated string", pos, "")]
        if kind != "ws":
            tokens.append(_make_token(kind, raw, pos))
        pos = m.end()
    tokens.append(_Token("end", None, end, ""))
    return tokens


def _make_token(kind: str, raw: str, pos: int) -> _Token:
    if kind == "str":
        return _Token(kind, _STRING_ESCAPE_RE.sub(r"\1", raw[1:-1]), pos, raw)
    if kind == "num":
        return _Token(kind, _number(raw), pos, raw)
    if kind == "name":
        word = raw.lower()
        if word in _WORD_OPS:
            return _Token("op", _WORD_OPS[word], pos, raw)
        if word in _KEYWORDS:
            return _Token("kw", word, pos, raw)
    if kind == "var":
        return _Token(kind, raw[1:], pos, raw)
    return _Token(kind, raw, pos, raw)


def _number(raw: str) -> int | float:
    if any(c in raw for c in ".eE"):
        return float(raw)
    value = int(raw)
    # SQLite integers are 64-bit; a larger one would fail only when bound, so it becomes a REAL.
    return value if -_INT64 <= value < _INT64 else float(value)


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of filter"
    raw = token.raw if len(token.raw) <= 24 else token.raw[:21] + "..."
    return repr(raw)


# ------------------------------------------------------------------------------------------ parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0
        self.terms = 0

    def peek(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind == "error":
            raise FilterError(str(token.value), token.pos)
        return token

    def advance(self) -> _Token:
        token = self.peek()
        self.index += 1
        return token

    def accept(self, kind: str, value: str) -> bool:
        token = self.peek()
        if token.kind == kind and token.value == value:
            self.index += 1
            return True
        return False

    def expect(self, kind: str, value: str, what: str) -> None:
        if not self.accept(kind, value):
            self.fail(what)

    def fail(self, expected: str) -> NoReturn:
        token = self.peek()
        raise FilterError(f"expected {expected}, found {_describe(token)}", token.pos)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise FilterError("empty filter", 0)
        node = self.parse_or()
        if self.peek().kind != "end":
            self.fail("'&&', '||' or end of filter")
        return node

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.accept("op", "||"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Node:
        items = [self.parse_unary()]
        while self.accept("op", "&&"):
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_unary(self) -> Node:
        token = self.peek()
        if token.kind != "op" or token.value not in ("!", "("):
            return self.parse_compare()
        self.index += 1
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"filter is nested too deeply (max {MAX_DEPTH})", token.pos)
        node: Node = Not(self.parse_unary()) if token.value == "!" else self.parse_group()
        self.depth -= 1
        return node

    def parse_group(self) -> Node:
        node = self.parse_or()
        self.expect("op", ")", "')'")
        return node

    def parse_compare(self) -> Node:
        token = self.peek()
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(f"too many terms (max {MAX_TERMS})", token.pos)
        left = self.parse_operand()
        after = self.peek()
        if after.kind == "op" and (after.value in _COMPARE_OPS or after.value in ANY_OF_OPS):
            self.index += 1
            return Compare(str(after.value), left, self.parse_operand(), after.pos)
        if after.kind == "kw" and after.value in ("not", "in", "is"):
            return self.parse_keyword_compare(left)
        if isinstance(left, Macro):
            return left  # a macro call stands alone as a boolean term
        self.fail("a comparison operator")

    def parse_keyword_compare(self, left: Operand) -> Node:
        if self.accept("kw", "is"):
            negated = self.accept("kw", "not")
            self.expect("kw", "null", "NULL")
            return IsNull(left, negated)
        negated = self.accept("kw", "not")
        self.expect("kw", "in", "IN")
        return InList(left, self.parse_literal_list(), negated)

    def parse_literal_list(self) -> tuple[str | int | float | bool | None, ...]:
        self.expect("op", "(", "'('")
        values = [self.parse_literal("a literal value").value]
        while self.accept("op", ","):
            values.append(self.parse_literal("a literal value").value)
        self.expect("op", ")", "',' or ')'")
        return tuple(values)

    def parse_literal(self, expected: str) -> Literal:
        token = self.peek()
        if token.kind in ("str", "num"):
            self.index += 1
            return Literal(cast("str | int | float", token.value))
        if token.kind == "kw" and token.value in _KEYWORD_LITERALS:
            self.index += 1
            return Literal(_KEYWORD_LITERALS[str(token.value)])
        self.fail(expected)

    def parse_operand(self) -> Operand:
        token = self.peek()
        if token.kind == "name":
            self.index += 1
            return Field(token.raw, token.pos)
        if token.kind == "var":
            self.index += 1
            return self.parse_variable(token)
        return self.parse_literal("a field, value or @variable")

    def parse_variable(self, token: _Token) -> Operand:
        name = str(token.value)
        after = self.tokens[self.index]  # not peek(): a later bad character must not mask this error
        if after.kind == "op" and after.value == "(" and name not in _RESERVED_VARIABLES and "." not in name:
            self.index += 1
            return Macro(name, self.parse_macro_args(), token.pos)
        if name == "now":
            return Now()
        source, _, rest = name.removeprefix("request.").partition(".")
        if name.startswith("request.") and source in ("auth", "data") and rest:
            return RequestValue(source, rest)
        raise FilterError(f"unknown variable '{token.raw}'", token.pos)

    def parse_macro_args(self) -> tuple[Literal | RequestValue, ...]:
        if self.accept("op", ")"):
            return ()
        args = [self.parse_macro_arg()]
        while self.accept("op", ","):
            args.append(self.parse_macro_arg())
        self.expect("op", ")", "',' or ')'")
        return tuple(args)

    def parse_macro_arg(self) -> Literal | RequestValue:
        token = self.peek()
        if token.kind != "var":
            return self.parse_literal("a literal or @request value")
        arg = self.parse_variable(self.advance())
        if not isinstance(arg, RequestValue):
            raise FilterError("macro arguments must be literals or @request values", token.pos)
        return arg


# `@now(…)` and `@request(…)` are not macros, so a custom macro can never shadow a variable.
_RESERVED_VARIABLES: Final = frozenset({"now", "request"})
_KEYWORD_LITERALS: Final[dict[str, bool | None]] = {"true": True, "false": False, "null": None}


def parse(text: str) -> Node:
    """Parse filter text into an immutable AST (cached). Raises FilterError."""
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter is too long (max {MAX_LENGTH} characters)", MAX_LENGTH)
    return _parse_cached(text)


@functools.lru_cache(maxsize=1024)
def _parse_cached(text: str) -> Node:
    return _Parser(text).parse()


def referenced_fields(node: Node) -> set[str]:
    """Names of the plain fields a filter reads (for field-access and PII checks)."""
    names: set[str] = set()
    _collect_fields(node, names)
    return names


def _collect_fields(node: Node | Operand, names: set[str]) -> None:
    match node:
        case And(items) | Or(items):
            for item in items:
                _collect_fields(item, names)
        case Not(inner) | InList(inner) | IsNull(inner):
            _collect_fields(inner, names)
        case Compare(_, left, right):
            _collect_fields(left, names)
            _collect_fields(right, names)
        case Field(name):
            names.add(name)


# ----------------------------------------------------------------------------------------- emitter


class _Frag(NamedTuple):
    """An emitted boolean SQL fragment."""

    sql: str
    params: tuple[object, ...]
    nullable: bool  # may evaluate to NULL, so a negation must COALESCE it
    grouped: bool  # already atomic: safe to prefix with NOT without adding parentheses


class _Value(NamedTuple):
    """An emitted operand."""

    sql: str
    params: tuple[object, ...]
    const: bool  # a value known at compile time (literal, @request.*, @now)
    value: object


_FALSE: Final = _Frag("0", (), nullable=False, grouped=True)
_NULL: Final = _Value("NULL", (), const=True, value=None)
_LIKE_WILDCARD_RE = re.compile(r"(?<!\\)%")
_LIKE_LONE_BACKSLASH_RE = re.compile(r"\\(?![%_])")
_LIKE_UNESCAPE_RE = re.compile(r"\\([%_])")


def compile_filter(text: str, resolver: Resolver) -> tuple[str, list[object]]:
    """Parse (cached) and compile filter text. Empty text is an error: callers skip empty filters."""
    return compile_node(parse(text), resolver)


def compile_node(node: Node, resolver: Resolver) -> tuple[str, list[object]]:
    """Compile an AST to `(sql, params)`; see the module docstring for NULL and missing-value rules.

    A comparison involving a missing `@request.auth.*`/`@request.data.*` value is the constant `0`
    (false), never an error; so `!(@request.auth.x = 1)` is true when `x` is missing.
    """
    frag = _Emitter(resolver).node(node)
    return frag.sql, list(frag.params)


class _Emitter:
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.now: str | None = None  # one @now per compile, so `a < @now && b > @now` agree
        # The engine's spelling where SQLite and PostgreSQL differ (snackbase/backends/dialect.py).
        self.dialect = dialect.current.get()
        self.false = _FALSE if self.dialect is dialect.SQLITE else _Frag(self.dialect.false, (), False, True)

    def node(self, node: Node) -> _Frag:
        match node:
            case And(items):
                return self.group(items, " AND ")
            case Or(items):
                return self.group(items, " OR ")
            case Not(inner):
                return _negate(self.node(inner), self.dialect)
            case Compare():
                return self.compare(node)
            case InList():
                return self.in_list(node)
            case IsNull(operand, negated):
                return self.is_null(operand, negated)
            case Macro():
                value = self.macro(node)
                return self.false if value is MISSING else _Frag(value.sql, value.params, True, True)
        raise TypeError(f"not a filter node: {node!r}")

    def group(self, items: tuple[Node, ...], joiner: str) -> _Frag:
        frags = [self.node(item) for item in items]
        sql = "(" + joiner.join(f.sql for f in frags) + ")"
        params = tuple(p for f in frags for p in f.params)
        return _Frag(sql, params, any(f.nullable for f in frags), True)

    def compare(self, node: Compare) -> _Frag:
        if node.op in ANY_OF_OPS:
            return self.any_of(node)
        left, right = self.operand(node.left), self.operand(node.right)
        if left is MISSING or right is MISSING:
            return self.false
        if node.op in ("~", "!~"):
            frag = _like(left, right, node.position, self.dialect)
            return _negate(frag, self.dialect) if node.op == "!~" else frag
        left = self.as_instant(node.right, node.left, left, node.position)
        right = self.as_instant(node.left, node.right, right, node.position)
        if node.op in ("=", "!="):
            return _equality(node, left, right, self.dialect)
        return _Frag(f"{left.sql} {node.op} {right.sql}", left.params + right.params, True, False)

    def any_of(self, node: Compare) -> _Frag:
        """`path ?op value`: an EXISTS over the values of a multi-valued path, which the resolver's
        optional `many(name, position) -> (open_sql, value_sql, params)` hook builds; `open_sql` is
        `EXISTS (SELECT … WHERE …` and is closed here, around the plain comparison of each value.
        Without the hook, or on a single-valued path, the plain operator."""
        many = getattr(self.resolver, "many", None)
        path = many(node.left.name, node.left.position) if many and isinstance(node.left, Field) else None
        if path is None:
            return self.compare(Compare(node.op[1:], node.left, node.right))
        open_sql, value_sql, params = path
        inner = self.compare(Compare(node.op[1:], cast("Operand", Column(value_sql)), node.right))
        if inner is self.false:  # a missing @request value
            return self.false
        return _Frag(f"{open_sql} AND {inner.sql})", (*params, *inner.params), False, True)

    def in_list(self, node: InList) -> _Frag:
        left = self.operand(node.operand)
        if left is MISSING:
            return self.false
        kind = self.temporal_kind(node.operand)
        values = node.values if kind is None else tuple(_temporal(kind, v, 0) for v in node.values)
        frag = _in_frag(left, values)
        return _negate(frag, self.dialect) if node.negated else frag

    def is_null(self, operand: Operand, negated: bool) -> _Frag:
        value = self.operand(operand)
        if value is MISSING:
            return self.false
        keyword = "IS NOT NULL" if negated else "IS NULL"
        return _Frag(f"{value.sql} {keyword}", value.params, False, False)

    def operand(self, node: Operand) -> _Value | _Missing:
        match node:
            case Field(name, position):
                return _Value(self.resolver.field(name, position), (), False, None)
            case Literal(None):
                return _NULL
            case Literal(value):
                return _const(value)
            case RequestValue():
                found = self.request_value(node)
                return MISSING if found is MISSING else _const(found)
            case Now():
                return _const(self.current_time())
            case Macro():
                return self.macro(node)
            case Column(sql):
                return _Value(sql, (), False, None)
        raise TypeError(f"not an operand: {node!r}")

    def temporal_kind(self, node: Operand) -> str | None:
        """'date' or 'datetime' when `node` is a field of that type (and the resolver knows types)."""
        field_type = getattr(self.resolver, "field_type", None)
        if not isinstance(node, Field) or field_type is None:
            return None
        kind = field_type(node.name)
        return kind if kind in ("date", "datetime") else None

    def as_instant(self, other: Operand, node: Operand, value: _Value, position: int) -> _Value:
        """A text literal compared with a date/datetime field, in the stored format (UTC, ms, `Z`)."""
        if not isinstance(node, Literal) or not isinstance(node.value, str):
            return value
        kind = self.temporal_kind(other)
        return value if kind is None else _const(_temporal(kind, node.value, position))

    def request_value(self, node: RequestValue) -> object:
        if node.source == "auth":
            return self.resolver.request_auth(node.name)
        return self.resolver.request_data(node.name)

    def current_time(self) -> str:
        if self.now is None:
            self.now = self.resolver.now()
        return self.now

    def macro(self, node: Macro) -> _Value | _Missing:
        args = [arg.value if isinstance(arg, Literal) else self.request_value(arg) for arg in node.args]
        if any(arg is MISSING for arg in args):
            return MISSING
        sql, params = self.resolver.macro(node.name, args, node.position)
        return _Value(f"({sql})", tuple(params), False, None)


def _const(value: object) -> _Value:
    bound = _bind(value)
    return _Value("?", (bound,), True, bound)


def _bind(value: object) -> object:
    """A Python value as SQLite can bind it (request values may be any JSON value)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        return float(value)
    if isinstance(value, list | dict | tuple):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def _negate(frag: _Frag, sql: Dialect) -> _Frag:
    if frag.nullable:
        return _Frag(f"NOT COALESCE({frag.sql}, {sql.false})", frag.params, False, False)
    inner = frag.sql if frag.grouped else f"({frag.sql})"
    return _Frag(f"NOT {inner}", frag.params, False, False)


def _equality(node: Compare, left: _Value, right: _Value, sql: Dialect) -> _Frag:
    if _is_null_literal(node.left) or _is_null_literal(node.right):
        other = right if _is_null_literal(node.left) else left
        if other.const and other.params and sql is not dialect.SQLITE:
            # `$1 IS NULL` alone gives PostgreSQL no type for $1: the answer is known now anyway.
            holds = (other.value is None) == (node.op == "=")
            return _Frag(sql.true if holds else sql.false, (), False, True)
        keyword = "IS NULL" if node.op == "=" else "IS NOT NULL"
        return _Frag(f"{other.sql} {keyword}", other.params, False, False)
    if node.op == "=":
        return _Frag(f"{left.sql} = {right.sql}", left.params + right.params, True, False)
    return _Frag(f"{left.sql} {sql.is_not} {right.sql}", left.params + right.params, False, False)


def _is_null_literal(node: Operand) -> bool:
    return isinstance(node, Literal) and node.value is None


def _like(left: _Value, right: _Value, position: int, words: Dialect) -> _Frag:
    """`~`: a plain substring is instr() over lower-cased text (linear in the text for a pattern of at
    most MAX_LIKE_PATTERN characters); a value with an unescaped `%` is a LIKE pattern, with at most
    MAX_LIKE_WILDCARDS wildcards, so no single call can go quadratic on a large text."""
    if not right.const:
        # A field or macro on the right has no compile-time value: a bounded substring test (a longer
        # needle never matches, so the work per row stays bounded whatever the row holds).
        sql = (
            f"CASE WHEN length({right.sql}) <= {MAX_LIKE_PATTERN} "
            f"THEN instr(lower({left.sql}), lower({right.sql})) > 0 END"
        )
        return _budgeted(left, sql, right.params + left.params + right.params)
    if right.value is None:
        return _Frag(f"{left.sql} {words.ilike} NULL", left.params, True, False)
    text = right.value if isinstance(right.value, str) else str(right.value)
    if len(text) > MAX_LIKE_PATTERN:
        raise FilterError(f"'~' pattern is too long (max {MAX_LIKE_PATTERN} characters)", position)
    if not _LIKE_WILDCARD_RE.search(text):
        needle = _LIKE_UNESCAPE_RE.sub(r"\1", text)
        return _budgeted(left, f"instr(lower({left.sql}), lower(?)) > 0", (*left.params, needle))
    if len(text) > MAX_LIKE_WILDCARD_PATTERN:
        message = f"'~' pattern with wildcards is too long (max {MAX_LIKE_WILDCARD_PATTERN} characters)"
        raise FilterError(message, position)
    if len(_LIKE_ANY_WILDCARD_RE.findall(text)) > MAX_LIKE_WILDCARDS:
        raise FilterError(f"'~' pattern has too many wildcards (max {MAX_LIKE_WILDCARDS})", position)
    # `\%`/`\_` already escape under ESCAPE '\'; any other backslash must stay a literal one.
    pattern = "%" + _LIKE_LONE_BACKSLASH_RE.sub(r"\\\\", text) + "%"
    return _budgeted(left, f"{left.sql} {words.ilike} ? ESCAPE '\\'", (*left.params, pattern))


def _budgeted(text: _Value, sql: str, params: tuple[object, ...]) -> _Frag:
    """`sb_budget(octet_length(text)) AND …`: the connection's budget check before each row's (possibly
    long) match, told the size of the text about to be matched, so that on the event loop a read can
    move to a reader thread before a match that would outlast its share (snackbase.db); skipped for
    short texts (SMALL_MATCH_BYTES).

    `sb_budget()` is 1 or aborts the statement, so the value (and its NULL) is the match's own; a NULL
    text's octet_length is NULL, and `NULL <= n OR 1` is 1."""
    size = f"octet_length({text.sql})"
    check = f"({size} <= {SMALL_MATCH_BYTES} OR sb_budget({size}))"
    return _Frag(f"({check} AND {sql})", (*text.params, *text.params, *params), True, True)


_LIKE_ANY_WILDCARD_RE = re.compile(r"(?<!\\)[%_]")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_RE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}(?::[0-9]{2})?)(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _temporal(kind: str, value: object, position: int) -> object:
    """A literal compared with a date or datetime field, in the stored format; FilterError if malformed.

    datetime: any RFC 3339 offset and precision → `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, truncated to ms, as
    stored), a bare date → its midnight UTC; date: `YYYY-MM-DD` only. `null` and non-text pass through."""
    if not isinstance(value, str):
        return value
    try:
        if _DATE_RE.fullmatch(value):
            day = datetime.date.fromisoformat(value)
            return day.isoformat() if kind == "date" else f"{day.isoformat()}T00:00:00.000Z"
        match = _DATETIME_RE.fullmatch(value) if kind == "datetime" else None
        if match is None:
            raise ValueError(value)
        day_text, clock, fraction, offset = match.groups()
        clock = clock if clock.count(":") == 2 else clock + ":00"
        micros = (fraction or ".0")[1:7].ljust(6, "0")
        moment = datetime.datetime.fromisoformat(
            f"{day_text}T{clock}.{micros}{'+00:00' if offset in ('Z', 'z') else offset}"
        ).astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        expected = "YYYY-MM-DD" if kind == "date" else "an RFC 3339 date-time with an offset"
        raise FilterError(f"invalid {kind} literal {value[:40]!r}: expected {expected}", position) from None
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _in_frag(left: _Value, values: tuple[object, ...]) -> _Frag:
    bound = tuple(_bind(v) for v in values if v is not None)
    has_null = len(bound) < len(values)
    is_null = f"{left.sql} IS NULL"
    if not bound:
        return _Frag(is_null, left.params, False, False)
    in_sql = f"{left.sql} IN ({', '.join('?' * len(bound))})"
    if not has_null:
        return _Frag(in_sql, left.params + bound, True, False)
    # `x IN (…, NULL)` is never true in SQL; users mean "or x is null".
    return _Frag(f"({in_sql} OR {is_null})", left.params + bound + left.params, False, True)


# -------------------------------------------------------------------------------------------- sort


def parse_sort(text: str) -> list[tuple[str, bool]]:
    """`"-views,+title"` → `[("views", True), ("title", False)]` (name, descending)."""
    return [(name, desc) for name, desc, _ in _parse_sort_cached(text)]


def compile_sort(text: str, resolver: Resolver) -> str:
    """An ORDER BY list (without the keyword): `"t"."views" DESC, "t"."title" ASC`."""
    items = _parse_sort_cached(text)
    sql = dialect.current.get()  # NULLs sort first ascending on both engines (SQLite's order)
    return ", ".join(
        f"{resolver.field(name, pos)} {sql.desc if desc else sql.asc}" for name, desc, pos in items
    )


@functools.lru_cache(maxsize=1024)
def _parse_sort_cached(text: str) -> tuple[tuple[str, bool, int], ...]:
    if len(text) > MAX_LENGTH:
        raise FilterError(f"sort is too long (max {MAX_LENGTH} characters)", MAX_LENGTH)
    if not text.strip():
        raise FilterError("empty sort", 0)
    items, start = [], 0
    for part in text.split(","):
        items.append(_parse_sort_item(part, start))
        if len(items) > MAX_SORT_ITEMS:
            raise FilterError(f"too many sort fields (max {MAX_SORT_ITEMS})", start)
        start += len(part) + 1
    return tuple(items)


def _parse_sort_item(part: str, start: int) -> tuple[str, bool, int]:
    stripped = part.strip()
    pos = start + len(part) - len(part.lstrip())
    if not stripped:
        raise FilterError("empty sort item", pos)
    desc = stripped[0] == "-"
    name = stripped[1:] if stripped[0] in "+-" else stripped
    if not _NAME_RE.fullmatch(name) and name not in SORT_VARIABLES:
        raise FilterError(f"invalid sort field {name!r}", pos)
    return name, desc, pos
