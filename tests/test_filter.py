"""Tests of the filter/sort compiler: tables of exact SQL, error positions, semantics run on SQLite,
and property tests that no input crashes it or reaches the SQL text unbound."""

from __future__ import annotations

import json
import pickle
import re
import sqlite3
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snackbase.filter import (
    MISSING,
    Compare,
    Field,
    FilterError,
    Literal,
    Node,
    compile_filter,
    compile_sort,
    parse,
    parse_sort,
    referenced_fields,
)

NOW = "2024-05-01 12:00:00.000Z"
FIELDS = {
    "id": '"t"."id"',
    "a": '"t"."a"',
    "b": '"t"."b"',
    "c": '"t"."c"',
    "title": '"t"."title"',
    "status": '"t"."status"',
    "views": '"t"."views"',
    "owner": '"t"."owner"',
    "author.name": '"t"."author_name"',
}
AUTH = {"id": "u1", "role": "admin", "none": None}
DATA = {"title": "Hi", "none": None, "tags": ["x", "y"], "big": 2**70}
MACROS = {"owns_record": '"t"."owner" = ?', "has_status": '"t"."status" = ?'}


def sqlite_value(value: object) -> object:
    """What a real macro resolver does with raw argument values before binding them."""
    if isinstance(value, list) or (isinstance(value, int) and not -(2**63) <= value < 2**63):
        return json.dumps(value)
    return value


class Resolver:
    """A whitelisting resolver over table `t`; records every SQL fragment it hands out."""

    def __init__(self) -> None:
        self.emitted: list[str] = []

    def field(self, name: str, position: int) -> str:
        if name not in FIELDS:
            raise FilterError(f"unknown field '{name}'", position)
        self.emitted.append(FIELDS[name])
        return FIELDS[name]

    def request_auth(self, name: str) -> object:
        return AUTH.get(name, MISSING)

    def request_data(self, name: str) -> object:
        return DATA.get(name, MISSING)

    def macro(self, name: str, args: list[object], position: int) -> tuple[str, list[object]]:
        args = [sqlite_value(arg) for arg in args]
        if name == "owns_record":
            return self._emit(MACROS[name], [AUTH["id"]])
        if name == "has_status":
            return self._emit(MACROS[name], args[:1])
        if name == "any":  # takes any number of arguments
            return self._emit(" AND ".join(["? IS NOT NULL"] * len(args)) or "1", list(args))
        raise FilterError(f"unknown macro '@{name}'", position)

    def _emit(self, sql: str, params: list[object]) -> tuple[str, list[object]]:
        self.emitted.append(sql)
        return sql, params

    def now(self) -> str:
        return NOW


def compile_(text: str) -> tuple[str, list[object]]:
    return compile_filter(text, Resolver())


# ------------------------------------------------------------------------------------- exact SQL

A, B, C, T, S = '"t"."a"', '"t"."b"', '"t"."c"', '"t"."title"', '"t"."status"'
LIKE = " LIKE ? ESCAPE '\\'"
# `~`: each row checks the statement budget first; a plain substring is instr (linear), never a LIKE.
BUDGET = f"(octet_length({T}) <= 64 OR sb_budget(octet_length({T})))"
INSTR = f"({BUDGET} AND instr(lower({T}), lower(?)) > 0)"
TLIKE = f"({BUDGET} AND {T}{LIKE})"

COMPILE_CASES = [
    # operators
    ('a = "x"', f"{A} = ?", ["x"]),
    ('a != "x"', f"{A} IS NOT ?", ["x"]),
    ("a > 1", f"{A} > ?", [1]),
    ("a >= 1.5", f"{A} >= ?", [1.5]),
    ("a < -2", f"{A} < ?", [-2]),
    ("a <= 1e3", f"{A} <= ?", [1000.0]),
    ("a = b", f"{A} = {B}", []),
    ("a != b", f"{A} IS NOT {B}", []),
    ("a = true", f"{A} = ?", [1]),
    ("a = FALSE", f"{A} = ?", [0]),
    ("a = 99999999999999999999", f"{A} = ?", [1e20]),
    ("author.name = 'x'", '"t"."author_name" = ?', ["x"]),
    # null
    ("a = null", f"{A} IS NULL", []),
    ("a != NULL", f"{A} IS NOT NULL", []),
    ("null = a", f"{A} IS NULL", []),
    ("a IS NULL", f"{A} IS NULL", []),
    ("a is not null", f"{A} IS NOT NULL", []),
    ("a > null", f"{A} > NULL", []),
    # precedence, grouping, negation
    ("a = 1 || b = 2 && c = 3", f"({A} = ? OR ({B} = ? AND {C} = ?))", [1, 2, 3]),
    ("(a = 1 || b = 2) && c = 3", f"(({A} = ? OR {B} = ?) AND {C} = ?)", [1, 2, 3]),
    ("a = 1 && (b > 2 || c IS NULL)", f"({A} = ? AND ({B} > ? OR {C} IS NULL))", [1, 2]),
    ("a = 1 and b = 2 OR c = 3", f"(({A} = ? AND {B} = ?) OR {C} = ?)", [1, 2, 3]),
    ("a=1&&b=2&&c=3", f"({A} = ? AND {B} = ? AND {C} = ?)", [1, 2, 3]),
    ("((a = 1))", f"{A} = ?", [1]),
    ("!(a = 1)", f"NOT COALESCE({A} = ?, 0)", [1]),
    ("!a = 1 && b = 2", f"(NOT COALESCE({A} = ?, 0) AND {B} = ?)", [1, 2]),
    ("!(a != 1)", f"NOT ({A} IS NOT ?)", [1]),
    ("!(a = 1 && b IS NULL)", f"NOT COALESCE(({A} = ? AND {B} IS NULL), 0)", [1]),
    ("!(a IS NULL || b IS NULL)", f"NOT ({A} IS NULL OR {B} IS NULL)", []),
    ("!!(a = 1)", f"NOT (NOT COALESCE({A} = ?, 0))", [1]),
    # IN
    ('a IN ("x", 2, true)', f"{A} IN (?, ?, ?)", ["x", 2, 1]),
    ("a in (1)", f"{A} IN (?)", [1]),
    ('a NOT IN ("x", "y")', f"NOT COALESCE({A} IN (?, ?), 0)", ["x", "y"]),
    ('a in ("x", null)', f"({A} IN (?) OR {A} IS NULL)", ["x"]),
    ('a not in ("x", null)', f"NOT ({A} IN (?) OR {A} IS NULL)", ["x"]),
    ("a IN (null)", f"{A} IS NULL", []),
    # strings and escapes
    (r'a = "say \"hi\""', f"{A} = ?", ['say "hi"']),
    (r"a = 'it\'s'", f"{A} = ?", ["it's"]),
    (r'a = "back\\slash"', f"{A} = ?", ["back\\slash"]),
    (r'a = "keep\n \q"', f"{A} = ?", ["keep\\n \\q"]),
    (r"""a = "it's" || b = 'say "x"'""", f"({A} = ? OR {B} = ?)", ["it's", 'say "x"']),
    ('a = "&& || ( ) = @now"', f"{A} = ?", ["&& || ( ) = @now"]),
    # ~ and !~
    ('title ~ "abc"', INSTR, ["abc"]),
    ('title ~ "a_b"', INSTR, ["a_b"]),
    (r'title ~ "50\%"', INSTR, ["50%"]),
    (r'title ~ "a\_b\\c"', INSTR, ["a_b\\c"]),
    ('title ~ "a%b_c"', TLIKE, ["%a%b_c%"]),
    (r'title ~ "5\% of %"', TLIKE, ["%5\\% of %%"]),
    (r'title ~ "a\\b%"', TLIKE, ["%a\\\\b%%"]),
    ("title ~ 42", INSTR, ["42"]),
    ('title !~ "x"', f"NOT COALESCE({INSTR}, 0)", ["x"]),
    (
        "title ~ b",
        f"({BUDGET} AND CASE WHEN length({B}) <= 256 THEN instr(lower({T}), lower({B})) > 0 END)",
        [],
    ),
    ("title ~ null", T + " LIKE NULL", []),
    # @request, @now
    ("owner = @request.auth.id", '"t"."owner" = ?', ["u1"]),
    ("@request.auth.role = 'admin'", "? = ?", ["admin", "admin"]),
    ("a = @request.data.title", f"{A} = ?", ["Hi"]),
    ("a = @request.data.tags", f"{A} = ?", ['["x","y"]']),
    ("a = @request.data.big", f"{A} = ?", [float(2**70)]),
    ("a = @request.auth.none", f"{A} = ?", [None]),
    ("a != @request.auth.none", f"{A} IS NOT ?", [None]),
    ("@request.data.none = null", "? IS NULL", [None]),
    ("a = @request.auth.missing", "0", []),
    ("!(a = @request.auth.missing)", "NOT 0", []),
    ("@request.data.missing IS NULL", "0", []),
    ("@request.data.missing IN (1)", "0", []),
    ("a = 1 || @request.data.missing ~ 'x'", f"({A} = ? OR 0)", [1]),
    ("a < @now && b > @now", f"({A} < ? AND {B} > ?)", [NOW, NOW]),
    # macros
    ("@owns_record()", '("t"."owner" = ?)', ["u1"]),
    ('@owns_record() && status = "x"', f'(("t"."owner" = ?) AND {S} = ?)', ["u1", "x"]),
    ('@has_status("draft") = true', f"({S} = ?) = ?", ["draft", 1]),
    ('!@has_status("draft")', f"NOT COALESCE(({S} = ?), 0)", ["draft"]),
    ("@has_status(@request.auth.role)", f"({S} = ?)", ["admin"]),
    ("@has_status(@request.auth.missing)", "0", []),
    (
        "@any(1, 'x', true, null)",
        "(? IS NOT NULL AND ? IS NOT NULL AND ? IS NOT NULL AND ? IS NOT NULL)",
        [1, "x", True, None],
    ),
]


@pytest.mark.parametrize(("text", "sql", "params"), COMPILE_CASES)
def test_compile(text: str, sql: str, params: list[object]) -> None:
    assert compile_(text) == (sql, params)


def test_literal_types_are_kept() -> None:
    _, params = compile_("a IN (1, 1.0, true, 'x')")
    assert [type(p) for p in params] == [int, float, int, str]


def test_macro_receives_python_values() -> None:
    seen: list[object] = []

    class Spy(Resolver):
        def macro(self, name: str, args: list[object], position: int) -> tuple[str, list[object]]:
            seen.extend([name, args, position])
            return "1", []

    compile_filter("a = 1 && @any(true, -1.5, 'x', null, @request.auth.id)", Spy())
    assert seen == ["any", [True, -1.5, "x", None, "u1"], 9]


def test_now_is_asked_once_per_compile() -> None:
    calls: list[int] = []

    class Counting(Resolver):
        def now(self) -> str:
            calls.append(1)
            return NOW

    compile_filter("a < @now && b > @now", Counting())
    assert calls == [1]


# ----------------------------------------------------------------------------------------- errors

ERROR_CASES = [
    ("", "empty filter", 0),
    ("   ", "empty filter", 0),
    ("a = 1 $", "unexpected character '$'", 6),
    ("a = 1 && b # 2", "unexpected character '#'", 11),
    ("a = @ 1", "unexpected character '@'", 4),
    ("a.", "unexpected character '.'", 1),
    ('a = "abc', "unterminated string", 4),
    ("a = 'ab\\'", "unterminated string", 4),
    ("a = 1 b = 2", "expected '&&', '||' or end of filter, found 'b'", 6),
    ("a =", "expected a field, value or @variable, found end of filter", 3),
    ("a", "expected a comparison operator, found end of filter", 1),
    ("a = = 1", "found '='", 4),
    ("(a = 1", "expected ')', found end of filter", 6),
    ("a = 1)", "found ')'", 5),
    ("&& a = 1", "found '&&'", 0),
    ("a = 1 &&", "found end of filter", 8),
    ("a = 1 and or b = 2", "found 'or'", 10),
    ("!", "found end of filter", 1),
    ("a IN ()", "expected a literal value, found ')'", 6),
    ("a IN (1,)", "expected a literal value, found ')'", 8),
    ("a IN 1", "expected '(', found '1'", 5),
    ("a IN (b)", "expected a literal value, found 'b'", 6),
    ("a NOT = 1", "expected IN, found '='", 6),
    ("a IS 1", "expected NULL, found '1'", 5),
    ("a = @foo", "unknown variable '@foo'", 4),
    ("a = @request.auth", "unknown variable '@request.auth'", 4),
    ("a = @request.query.x", "unknown variable '@request.query.x'", 4),
    ("@now(1) = 1", "expected a comparison operator, found '('", 4),
    ("@has_status(b)", "expected a literal or @request value, found 'b'", 12),
    ("@has_status(@now)", "macro arguments must be literals or @request values", 12),
    ("@has_status(1", "expected ',' or ')', found end of filter", 13),
    ("@nope() && a = 1", "unknown macro '@nope'", 0),
    ("a = 1 && zz = 2", "unknown field 'zz'", 9),
    ("a = @foo $", "unknown variable '@foo'", 4),
    ("1a = 1", "expected a comparison operator, found 'a'", 1),
    ("a = 1 && " * 64 + "a = 1", "too many terms (max 64)", 9 * 64),
    ("!" * 33 + "a = 1", "filter is nested too deeply (max 32)", 32),
    ("(" * 33 + "a = 1" + ")" * 33, "filter is nested too deeply (max 32)", 32),
    ("a = '" + "x" * 3500 + "'", "filter is too long (max 3500 characters)", 3500),
]


@pytest.mark.parametrize(("text", "message", "position"), ERROR_CASES)
def test_errors(text: str, message: str, position: int) -> None:
    with pytest.raises(FilterError) as caught:
        compile_(text)
    assert message in caught.value.message
    assert caught.value.position == position
    assert str(caught.value) == f"{caught.value.message} (at position {position})"


def test_limits_are_inclusive() -> None:
    compile_(" && ".join(["a = 1"] * 64))
    compile_("!" * 32 + "a = 1")
    compile_("a = '" + "x" * 3494 + "'")


def test_filter_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(FilterError("boom", 3)))
    assert (error.message, error.position, str(error)) == ("boom", 3, "boom (at position 3)")


# ----------------------------------------------------------------------------------------- AST API


def test_parse_is_cached_and_immutable() -> None:
    node = parse("a = 1")
    assert node is parse("a = 1")
    assert node == Compare("=", Field("a", 0), Literal(1))
    with pytest.raises(AttributeError):
        node.op = "!="  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("a = 1", {"a"}),
        ("a = b || !(c IN (1)) && title IS NULL", {"a", "b", "c", "title"}),
        ("author.name ~ 'x' && @has_status('a') && @request.auth.id = owner", {"author.name", "owner"}),
        ("@owns_record()", set()),
    ],
)
def test_referenced_fields(text: str, fields: set[str]) -> None:
    assert referenced_fields(parse(text)) == fields


# ------------------------------------------------------------------------------------------- sort


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("title", [("title", False)]),
        ("-views,title", [("views", True), ("title", False)]),
        (" -views , +title ", [("views", True), ("title", False)]),
        ("author.name,-id", [("author.name", False), ("id", True)]),
    ],
)
def test_parse_sort(text: str, items: list[tuple[str, bool]]) -> None:
    assert parse_sort(text) == items


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("", "empty sort", 0),
        ("a,,b", "empty sort item", 2),
        ("a,", "empty sort item", 2),
        ("-", "invalid sort field ''", 0),
        ("a, b c", "invalid sort field 'b c'", 3),
        ("a;drop", "invalid sort field 'a;drop'", 0),
        ("--a", "invalid sort field '-a'", 0),
        (",".join(["a"] * 33), "too many sort fields (max 32)", 64),
    ],
)
def test_parse_sort_errors(text: str, message: str, position: int) -> None:
    with pytest.raises(FilterError) as caught:
        parse_sort(text)
    assert (caught.value.message, caught.value.position) == (message, position)


def test_compile_sort() -> None:
    assert compile_sort("-views,title", Resolver()) == '"t"."views" DESC, "t"."title" ASC'
    with pytest.raises(FilterError) as caught:
        compile_sort("title,-nope", Resolver())
    assert (caught.value.message, caught.value.position) == ("unknown field 'nope'", 6)


# ------------------------------------------------------------------------------- run on SQLite

ROWS = [
    (1, "Hello World", "draft", 10, "u1"),
    (2, "hello there", "published", 5, "u2"),
    (3, "50% off", None, None, "u1"),
    (4, "under_score", "published", 100, None),
    (5, "back\\slash", "archived", 0, "u2"),
    (6, "100%", "draft", 7, "u3"),
]


def with_budget(conn: sqlite3.Connection) -> sqlite3.Connection:
    """The app's connections define `sb_budget()` (snackbase.db); here it never stops a statement.
    Python's own sqlite3 may predate `octet_length` (SQLite 3.43; apsw bundles a newer SQLite)."""
    conn.create_function("sb_budget", -1, lambda *_size: 1)
    if sqlite3.sqlite_version_info < (3, 43):
        conn.create_function("octet_length", 1, lambda v: None if v is None else len(str(v).encode()))
    return conn


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    conn = with_budget(sqlite3.connect(":memory:"))
    columns = "id INTEGER, title TEXT, status TEXT, views INTEGER, owner TEXT, a, b, c, author_name TEXT"
    conn.execute(f"CREATE TABLE t ({columns})")
    conn.executemany("INSERT INTO t (id, title, status, views, owner) VALUES (?, ?, ?, ?, ?)", ROWS)
    return conn


def select_ids(conn: sqlite3.Connection, text: str) -> list[int]:
    sql, params = compile_(text)
    return [row[0] for row in conn.execute(f'SELECT "t"."id" FROM t WHERE {sql} ORDER BY 1', params)]


ALL = [1, 2, 3, 4, 5, 6]
SEMANTIC_CASES = [
    ('status = "draft"', [1, 6]),
    ('status != "draft"', [2, 3, 4, 5]),
    ('!(status = "draft")', [2, 3, 4, 5]),
    ("status = null", [3]),
    ("status != null", [1, 2, 4, 5, 6]),
    ('status IN ("draft", "archived")', [1, 5, 6]),
    ('status NOT IN ("draft", "archived")', [2, 3, 4]),
    ('status IN ("draft", null)', [1, 3, 6]),
    ('status NOT IN ("draft", null)', [2, 4, 5]),
    ("views > 5", [1, 4, 6]),
    ("!(views > 5)", [2, 3, 5]),
    ("views >= 5 && views <= 10", [1, 2, 6]),
    ("views < 5 || views IS NULL", [3, 5]),
    ('status = "draft" or views = 0', [1, 5, 6]),
    ("id IN (1, 2.0, true)", [1, 2]),
    ('title ~ "hello"', [1, 2]),
    ('title ~ "HELLO w"', [1]),
    ('title !~ "hello"', [3, 4, 5, 6]),
    ('title ~ "50%"', [3]),
    (r'title ~ "0\%"', [3, 6]),
    ('title ~ "_"', [4]),
    ('title ~ "r_s"', [4]),
    ('title ~ "h%o"', [1, 2]),
    ('title ~ "e_l%"', [1, 2]),
    (r'title ~ "k\\s"', [5]),
    (r'title ~ "\\"', [5]),
    (r'title ~ "\\%"', [3, 6]),  # the string escape makes `\%`: a literal percent sign
    (r'title ~ "\%"', [3, 6]),
    ("title ~ title", ALL),
    ("status !~ status", [3]),  # NULL never contains anything, so its negation holds
    ("owner = @request.auth.id", [1, 3]),
    ("owner != @request.auth.id", [2, 4, 5, 6]),
    ("owner = @request.auth.missing", []),
    ("!(owner = @request.auth.missing)", ALL),
    ("owner = @request.auth.none", []),
    ("@owns_record()", [1, 3]),
    ("!@owns_record()", [2, 4, 5, 6]),
    ('@has_status("draft") = true', [1, 6]),
    ('@has_status("draft") && views > 7', [1]),
    ("'2024-01-01' < @now && '2025-01-01' > @now", ALL),
]


@pytest.mark.parametrize(("text", "ids"), SEMANTIC_CASES)
def test_semantics_on_sqlite(db: sqlite3.Connection, text: str, ids: list[int]) -> None:
    assert select_ids(db, text) == ids


# ------------------------------------------------------------------------------ property tests

PROPERTY = settings(max_examples=300, derandomize=True, deadline=None, database=None)

_SQL_TOKEN = re.compile(r"\s+|\?|\(|\)|,|'\\'|[A-Za-z_]+|<=|>=|[<>=]|[0-9]+")
_SQL_WORDS = {"AND", "OR", "NOT", "COALESCE", "IS", "NULL", "IN", "LIKE", "ESCAPE", "instr", "lower"}
_SQL_WORDS |= {"CASE", "WHEN", "THEN", "END", "length", "sb_budget", "octet_length"}  # the bounded `~`


def assert_sql_is_safe(sql: str, params: list[object], resolver: Resolver) -> None:
    """Only resolver output, `?`, and whitelisted keywords/operators may appear in the SQL text."""
    assert sql.count("?") == len(params)
    rest = sql
    for fragment in sorted(set(resolver.emitted), key=len, reverse=True):
        rest = rest.replace(fragment, " ")
    pos = 0
    while pos < len(rest):
        match = _SQL_TOKEN.match(rest, pos)
        assert match, f"unexpected SQL text {rest[pos:]!r} in {sql!r}"
        word = match.group()
        assert not word[0].isalpha() or word in _SQL_WORDS, f"unexpected word {word!r} in {sql!r}"
        pos = match.end()


def check_any_text(conn: sqlite3.Connection, text: str) -> None:
    """Either a FilterError, or SQL that is safe and that SQLite runs."""
    resolver = Resolver()
    try:
        sql, params = compile_filter(text, resolver)
    except FilterError as error:
        assert 0 <= error.position <= len(text)
        return
    assert_sql_is_safe(sql, params, resolver)
    conn.execute(f"SELECT count(*) FROM t WHERE {sql}", params).fetchone()


def quote(value: str, mark: str) -> str:
    return mark + value.replace("\\", "\\\\").replace(mark, "\\" + mark) + mark


def any_case(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from([word.lower(), word.upper(), word.title()])


_text = st.text(alphabet=string.ascii_letters[:6] + " %_\\\"'é\n&|()=@", max_size=8)
string_literal = st.builds(quote, _text, st.sampled_from(['"', "'"]))
number_literal = st.one_of(
    st.integers(-(10**25), 10**25).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
literal = st.one_of(string_literal, number_literal, *(any_case(w) for w in ("true", "false", "null")))
request_value = st.sampled_from(
    [
        "@request.auth.id",
        "@request.auth.none",
        "@request.auth.missing",
        "@request.data.tags",
        "@request.data.big",
    ]
)
macro_call = st.builds(
    lambda name, args: f"@{name}({', '.join(args)})",
    st.sampled_from(["owns_record", "has_status", "any"]),
    st.lists(literal | request_value, min_size=1, max_size=3),
)
operand = st.one_of(st.sampled_from(sorted(FIELDS)), literal, request_value, st.just("@now"), macro_call)
compare = st.one_of(
    st.builds(
        "{} {} {}".format, operand, st.sampled_from(["=", "!=", ">", ">=", "<", "<=", "~", "!~"]), operand
    ),
    st.builds(
        lambda left, neg, values: f"{left} {neg}IN ({', '.join(values)})",
        operand,
        st.sampled_from(["", "NOT ", "not "]),
        st.lists(literal, min_size=1, max_size=4),
    ),
    st.builds("{} IS {}NULL".format, operand, st.sampled_from(["", "NOT ", "not "])),
    macro_call,
)
grammar_filter = st.recursive(
    compare,
    lambda inner: st.one_of(
        st.builds("{} {} {}".format, inner, st.sampled_from(["&&", "||", "and", "OR"]), inner),
        inner.map("!({})".format),
        inner.map("({})".format),
    ),
    max_leaves=12,
)
TOKEN_SOUP = [
    "a", "title", "author.name", "nope", "(", ")", "!", "&&", "||", "and", "or", "=", "!=", "~", "!~",
    ">", "<=", "IN", "not", "IS", "NULL", "true", '"x%"', "'y", '"', "\\", "1", "-2.5", "1e", ",",
    "@request.auth.id", "@request.data.none", "@request.auth.", "@now", "@any(", "@", "@bogus", ".", "$",
]  # fmt: skip


@PROPERTY
@given(text=st.text(max_size=120))
def test_random_text_only_raises_filter_error(db: sqlite3.Connection, text: str) -> None:
    check_any_text(db, text)


@PROPERTY
@given(tokens=st.lists(st.sampled_from(TOKEN_SOUP), max_size=24), glue=st.sampled_from([" ", ""]))
def test_token_soup_only_raises_filter_error(db: sqlite3.Connection, tokens: list[str], glue: str) -> None:
    check_any_text(db, glue.join(tokens))


def mutate(text: str, start: int, length: int, token: str) -> str:
    start %= len(text) + 1
    return text[:start] + token + text[start + length :]


# Near-valid input: a valid filter with one slice replaced by a token (often still valid).
mutated_filter = st.builds(
    mutate, grammar_filter, st.integers(0, 200), st.integers(0, 3), st.sampled_from(["", *TOKEN_SOUP])
)


@PROPERTY
@given(text=mutated_filter)
def test_mutated_filters_only_raise_filter_error(db: sqlite3.Connection, text: str) -> None:
    check_any_text(db, text)


@PROPERTY
@given(text=grammar_filter)
def test_grammar_filters_compile_to_safe_runnable_sql(db: sqlite3.Connection, text: str) -> None:
    resolver = Resolver()
    sql, params = compile_filter(text, resolver)
    assert_sql_is_safe(sql, params, resolver)
    db.execute(f"SELECT count(*) FROM t WHERE {sql}", params).fetchone()


@PROPERTY
@given(value=st.text(max_size=20), mark=st.sampled_from(['"', "'"]))
def test_string_literals_round_trip(value: str, mark: str) -> None:
    node: Node = parse(f"a = {quote(value, mark)}")
    assert node == Compare("=", Field("a", 0), Literal(value))


_like_text = st.text(alphabet="aAbB %_\\", max_size=8)


def like_oracle(value: str, title: str) -> bool:
    """SPEC section 6 `~`, written independently of the compiler as a Python regex."""
    if re.search(r"(?<!\\)%", value):
        parts = {"\\%": "%", "\\_": "_", "%": ".*", "_": "."}
        body = "".join(parts.get(t) or re.escape(t) for t in re.findall(r"\\[%_]|.", value, re.DOTALL))
        return re.fullmatch(f".*{body}.*", title, re.IGNORECASE | re.DOTALL) is not None
    needle = re.sub(r"\\([%_])", r"\1", value)
    return needle.lower() in title.lower()


@PROPERTY
@given(value=_like_text, title=_like_text)
def test_like_matches_spec_oracle(value: str, title: str) -> None:
    conn = with_budget(sqlite3.connect(":memory:"))
    conn.execute("CREATE TABLE t (title TEXT)")
    conn.execute("INSERT INTO t VALUES (?)", (title,))
    for op, expected in (("~", like_oracle(value, title)), ("!~", not like_oracle(value, title))):
        sql, params = compile_(f"title {op} {quote(value, chr(34))}")
        assert conn.execute(f"SELECT count(*) FROM t WHERE {sql}", params).fetchone()[0] == expected
