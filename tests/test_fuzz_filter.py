"""The filter parser and compiler fuzzed directly (no HTTP): grammar-built, mutated, token-soup and
random texts, over a resolver that also types fields (so datetime and date literals are normalised).

Properties: the only exception is the parser's own FilterError (with a position inside the text); the
SQL holds no byte of user text outside bound parameters (only resolver output, `?` and whitelisted
keywords); SQLite runs it. `SNACKBASE_FUZZ_EXAMPLES=N` runs N examples (100,000 for a long run).
"""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snackbase.filter import MAX_LIKE_PATTERN, FilterError, compile_filter
from tests.test_filter import (
    TOKEN_SOUP,
    Resolver,
    assert_sql_is_safe,
    grammar_filter,
    mutated_filter,
    quote,
    with_budget,
)

EXAMPLES = int(os.environ.get("SNACKBASE_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(
    max_examples=EXAMPLES or 3000,
    deadline=None,
    database=None,
    derandomize=not EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TYPES = {"a": "datetime", "b": "date", "created_at": "datetime", "title": "text", "views": "number"}


class TypedResolver(Resolver):
    def field_type(self, name: str) -> str | None:
        return TYPES.get(name)


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    conn = with_budget(sqlite3.connect(":memory:"))
    conn.execute("CREATE TABLE t (id, a, b, c, title, status, views, owner, author_name, created_at)")
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                1,
                "2026-11-12T09:00:00.000Z",
                "2026-11-12",
                None,
                "a" * 5000,
                "x",
                3,
                "u1",
                "n",
                "2026-01-01T00:00:00.000Z",
            ),
            (2, None, None, 1.5, "Hello %_\\ wörld", None, None, None, None, None),
        ],
    )
    return conn


datetime_literal = st.one_of(
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.builds(
        "{}{}".format,
        st.datetimes().map(lambda d: d.isoformat()),
        st.sampled_from(["Z", "+02:00", "-23:59", "+00:00", "", "+24:00", "z"]),
    ),
    st.dates().map(str),
    st.text(alphabet="0123456789-:T.Z+ ", max_size=30),
)
temporal_compare = st.builds(
    "{} {} {}".format,
    st.sampled_from(["a", "b", "created_at", "title"]),
    st.sampled_from(["=", "!=", ">", ">=", "<", "<=", "~"]),
    st.builds(quote, datetime_literal, st.just('"')),
)
long_like = st.builds(
    lambda field, body: f'{field} ~ "{body}"',
    st.sampled_from(["title", "status", "a"]),
    st.text(alphabet="a%_b", min_size=MAX_LIKE_PATTERN - 20, max_size=MAX_LIKE_PATTERN + 20),
)
any_filter = st.one_of(
    grammar_filter,
    mutated_filter,
    st.lists(st.sampled_from(TOKEN_SOUP), max_size=24).map(" ".join),
    st.text(max_size=120),
    temporal_compare,
    st.builds("{} && {}".format, temporal_compare, grammar_filter),
    long_like,
)


@FUZZ
@given(text=any_filter)
def test_any_filter_text_compiles_safely_or_raises_filter_error(db: sqlite3.Connection, text: str) -> None:
    resolver = TypedResolver()
    try:
        sql, params = compile_filter(text, resolver)
    except FilterError as error:
        assert 0 <= error.position <= len(text)
        return
    assert_sql_is_safe(sql, params, resolver)
    started = time.perf_counter()
    db.execute(f"SELECT count(*) FROM t WHERE {sql}", params).fetchone()
    assert time.perf_counter() - started < 1.0, text  # no filter makes SQLite work long
