"""Filters and sorts through references, back-relations and multi-references (`project.status`,
`experiments_via_project.status ?= "failed"`, `tags.name ?= "x"`), compiled into the one query.

`RelationResolver` is the resolver of a client's `filter` and `sort` on a list (and of aggregates):
plain names go to `RecordResolver`; a dotted path walks reference fields up to `MAX_HOPS` levels.

- A single reference is a LEFT JOIN of the referenced table ON its id, the SAME account as the row it
  is reached from, and the referenced collection's **view rule** (compiled for that join's alias).
  A referenced record the caller may not view is a missing one: its fields are NULL.
- A multi-valued step (a back-relation `<collection>_via_<field>`, or a multi-reference field) is an
  `EXISTS (SELECT 1 FROM … WHERE …)` subquery with the same account and view rule; only the any-of
  operators (`?=`, `?!=`, `?>` …) can compare it (snackbase.filter's `many` hook).
- Every field on the way and at the end must be one the caller may read and sees in clear (field
  access `view` on referenced collections, `list` on the listed one; PII it sees masked is refused),
  so a filter is never an oracle for a value the caller cannot see.
- `@search("…")` joins the collection's full-text index (snackbase.search); `sort=@rank` orders by it.

Only client filters and sorts use this resolver; rules stay over the rule's own table (a rule naming
a dotted path is refused when saved).
"""

from __future__ import annotations

import re
from typing import Any, Final

import apsw
import msgspec

from snackbase import profiles, search
from snackbase.backends import dialect
from snackbase.collections import Registry
from snackbase.errors import ApiError
from snackbase.filter import FilterError
from snackbase.pii import hidden_fields
from snackbase.rules import ALIAS, Caller, RecordResolver, rule_clause
from snackbase.schema import SYSTEM_FIELDS, Collection, Field, is_multi_reference, quote_ident

MAX_HOPS: Final = 3  # references a path may walk (`a.b.c.field`)
VIA: Final = "_via_"
_VIA_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")


class BackRelation(msgspec.Struct, frozen=True):
    """`<source>_via_<field>`: the records of `source` whose reference `field` names this record."""

    source: Collection
    field: Field


def back_relation(
    conn: apsw.Connection, registry: Registry, target: Collection, name: str
) -> BackRelation | None:
    """The back-relation `name` names on `target`, or None (collection names may contain `_via_`, so
    every split is tried)."""
    if VIA not in name:
        return None
    collections = {c.name: c for c in registry.all(conn)}
    start = 0
    while (at := name.find(VIA, start)) > 0:
        source_name, field_name = name[:at], name[at + len(VIA) :]
        start = at + 1
        source = collections.get(source_name)
        f = source.field_map.get(field_name) if source is not None else None
        if (
            source is not None
            and f is not None
            and f.type == "reference"
            and f.options.get("collection") == target.name
        ):
            return BackRelation(source, f)
    return None


class _Sub(msgspec.Struct):
    """An EXISTS subquery being built: FROM head, joins, and the correlation in WHERE."""

    head: tuple[str, list[object]]
    where: tuple[str, list[object]]
    joins: list[tuple[str, list[object]]] = msgspec.field(default_factory=list)
    cache: dict[tuple[str, str], str] = msgspec.field(default_factory=dict)

    def open_sql(self) -> tuple[str, list[object]]:
        sql = "EXISTS (SELECT 1 " + self.head[0] + "".join(j for j, _ in self.joins)
        params = [*self.head[1], *(p for _, ps in self.joins for p in ps), *self.where[1]]
        return f"{sql} WHERE {self.where[0]}", params


class RelationResolver(RecordResolver):
    """The resolver of client filters and sorts over `collection` aliased `r`, with relation paths."""

    def __init__(
        self,
        conn: apsw.Connection,
        registry: Registry,
        collection: Collection,
        caller: Caller,
        hidden: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(collection, caller, hidden=hidden)
        self.conn = conn
        self.registry = registry
        self.joins: list[tuple[str, list[object]]] = []  # LEFT JOINs of the main query, in order
        self._cache: dict[tuple[str, str], str] = {}
        self._count = 0
        self.rank: str | None = None  # the rank expression of the first @search

    # --- what the query builder needs ---------------------------------------------------------

    def from_sql(self) -> tuple[str, list[object]]:
        """`"c_x" AS r LEFT JOIN …` and the joins' parameters (they precede the WHERE's)."""
        sql = f"{quote_ident(self.collection.table)} AS {ALIAS}" + "".join(j for j, _ in self.joins)
        return sql, [p for _, ps in self.joins for p in ps]

    # --- the resolver hooks -------------------------------------------------------------------

    def field(self, name: str, position: int) -> str:
        if name == "@rank":
            if self.rank is None:
                raise FilterError("sort by @rank needs a @search(...) in the filter", position)
            return self.rank
        if "." not in name:
            self._refuse_many(self.collection, name, position)
            return super().field(name, position)
        sql, sub = self._path(name, position, many=False)
        assert sub is None
        return sql

    def many(self, name: str, position: int) -> tuple[str, str, list[object]] | None:
        """For an any-of operator: (`EXISTS (SELECT 1 … WHERE …`, value, params), or None when the path
        is single-valued (then the operator is the plain one)."""
        value, sub = self._path(name, position, many=True)
        if sub is None:
            return None
        open_sql, params = sub.open_sql()
        return open_sql, value, params

    def macro(self, name: str, args: list[object], position: int) -> tuple[str, list[object]]:
        if name != "search":
            return super().macro(name, args, position)
        if len(args) != 1 or not isinstance(args[0], str):
            raise FilterError('@search() takes one text argument: @search("buffer solution")', position)
        alias = self._alias("s")
        join, params, rank, condition = search.join(self.collection, self.hidden, args[0], alias, position)
        self.joins.append((join, params))
        self.rank = self.rank or rank
        return condition, []

    # --- walking a path -----------------------------------------------------------------------

    def _alias(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def _refuse_many(self, collection: Collection, name: str, position: int) -> None:
        f = collection.field_map.get(name)
        multi = (f is not None and is_multi_reference(f)) or (
            f is None and back_relation(self.conn, self.registry, collection, name) is not None
        )
        if multi:
            raise FilterError(
                f"'{name[:64]}' holds several records: compare it with an any-of operator such as ?=",
                position,
            )

    def _path(self, name: str, position: int, *, many: bool) -> tuple[str, _Sub | None]:
        """(SQL of the value at the end of `name`, the EXISTS subquery it lives in or None)."""
        parts = name.split(".")
        if len(parts) - 1 > MAX_HOPS:
            raise FilterError(f"'{name[:64]}' goes through more than {MAX_HOPS} relations", position)
        alias, current, hidden = ALIAS, self.collection, self.hidden
        sub: _Sub | None = None
        for part in parts[:-1]:
            alias, current, sub = self._hop(name, position, alias, current, hidden, part, sub, many)
            hidden = hidden_fields(current, self.caller, "view")
        last = parts[-1]
        f = current.field_map.get(last)
        if f is not None and is_multi_reference(f) and many and sub is None and last not in hidden:
            m = self._alias("m")
            sub = _Sub(
                (f"FROM json_each({alias}.{quote_ident(last)}) AS {m}", []), (dialect.current.get().true, [])
            )
            return f"{m}.value", sub
        if f is None and last not in SYSTEM_FIELDS and many and sub is None:
            back = back_relation(self.conn, self.registry, current, last)
            if back is not None:  # `experiments_via_project ?= "id"`: the back-related ids
                alias, current, sub = self._hop(name, position, alias, current, hidden, last, sub, many)
                return f"{alias}.id", sub
        if f is None and last not in SYSTEM_FIELDS:
            raise FilterError(f"unknown field '{name[:64]}'", position)
        if last in hidden:
            raise FilterError(
                f"field '{name[:64]}' cannot be used in a filter or sort by this caller", position
            )
        if f is not None and is_multi_reference(f):
            raise FilterError(
                f"'{name[:64]}' holds several records: use an any-of operator such as ?=", position
            )
        return f"{alias}.{quote_ident(last)}", sub

    def _hop(
        self,
        name: str,
        position: int,
        alias: str,
        current: Collection,
        hidden: frozenset[str],
        part: str,
        sub: _Sub | None,
        many: bool,
    ) -> tuple[str, Collection, _Sub | None]:
        f = current.field_map.get(part)
        if f is not None and f.type == "reference":
            if part in hidden:
                raise FilterError(
                    f"field '{name[:64]}' cannot be used in a filter or sort by this caller", position
                )
            target = self.registry.get(self.conn, f.options["collection"])
            if not is_multi_reference(f):
                return self._join(name, position, alias, part, target, sub), target, sub
            self._need_many(name, position, many, sub)
            m, j = self._alias("m"), self._alias("j")
            rule, params = self._rule(name, position, target, j)
            head = (
                f"FROM json_each({alias}.{quote_ident(part)}) AS {m} JOIN {quote_ident(target.table)} AS {j} "
                f"ON {j}.id = {m}.value AND {j}.account_id = {alias}.account_id{rule}",
                params,
            )
            return j, target, _Sub(head, (dialect.current.get().true, []))
        if f is not None and f.type == "user":
            return self._profile_join(name, position, alias, part, hidden, sub)
        back = back_relation(self.conn, self.registry, current, part) if f is None else None
        if back is None:
            raise FilterError(f"'{part[:64]}' in '{name[:64]}' is not a reference field", position)
        self._need_many(name, position, many, sub)
        if back.field.name in hidden_fields(back.source, self.caller, "view"):
            raise FilterError(f"'{part[:64]}' cannot be used in a filter or sort by this caller", position)
        b = self._alias("b")
        rule, params = self._rule(name, position, back.source, b)
        column = f"{b}.{quote_ident(back.field.name)}"
        points = (
            f"{alias}.id IN (SELECT value FROM json_each({column}))"
            if is_multi_reference(back.field)
            else f"{column} = {alias}.id"
        )
        head = (f"FROM {quote_ident(back.source.table)} AS {b}", [])
        return b, back.source, _Sub(head, (f"{points} AND {b}.account_id = {alias}.account_id{rule}", params))

    def _profile_join(
        self, name: str, position: int, alias: str, part: str, hidden: frozenset[str], sub: _Sub | None
    ) -> tuple[str, Collection, _Sub | None]:
        """A `user` field: a LEFT JOIN of the users' profiles (snackbase.profiles) under the account's
        users view rule; the profile fields are what the path can name next."""
        if part in hidden:
            raise FilterError(
                f"field '{name[:64]}' cannot be used in a filter or sort by this caller", position
            )
        if self.caller.account_id is None:
            raise FilterError("name an account (X-Account-ID) to filter through user profiles", position)
        target = profiles.load(self.conn, self.caller.account_id)
        cache, joins = (self._cache, self.joins) if sub is None else (sub.cache, sub.joins)
        if (alias, part) not in cache:
            j = self._alias("u")
            rule, params = profiles.view_clause(target, self.caller, j)
            joins.append(
                (
                    f" LEFT JOIN {profiles.profile_table(target)} AS {j} "
                    f"ON {j}.id = {alias}.{quote_ident(part)} AND {j}.account_id = {alias}.account_id"
                    + (f" AND ({rule})" if rule else ""),
                    params,
                )
            )
            cache[(alias, part)] = j
        return cache[(alias, part)], target, sub

    def _need_many(self, name: str, position: int, many: bool, sub: _Sub | None) -> None:
        if not many:
            raise FilterError(
                f"'{name[:64]}' holds several records: compare it with an any-of operator such as ?=",
                position,
            )
        if sub is not None:
            raise FilterError(f"'{name[:64]}' goes through more than one multi-valued relation", position)

    def _join(
        self, name: str, position: int, alias: str, part: str, target: Collection, sub: _Sub | None
    ) -> str:
        """The alias of the LEFT JOIN of `target` through `alias.part` (one per path prefix)."""
        cache, joins = (self._cache, self.joins) if sub is None else (sub.cache, sub.joins)
        key = (alias, part)
        if key in cache:
            return cache[key]
        j = self._alias("j")
        rule, params = self._rule(name, position, target, j)
        joins.append(
            (
                f" LEFT JOIN {quote_ident(target.table)} AS {j} ON {j}.id = {alias}.{quote_ident(part)} "
                f"AND {j}.account_id = {alias}.account_id{rule}",
                params,
            )
        )
        cache[key] = j
        return j

    def _rule(self, name: str, position: int, target: Collection, alias: str) -> tuple[str, list[object]]:
        """` AND (view rule of target over alias)`, or a FilterError when the caller may not view it."""
        try:
            sql, params = rule_clause(target, "view", RecordResolver(target, self.caller, alias=alias))
        except ApiError:
            raise FilterError(
                f"'{name[:64]}' reaches '{target.name}', whose records this caller may not view", position
            ) from None
        return (f" AND ({sql})", params) if sql else ("", [])


def path_values(row: dict[str, Any], names: list[str]) -> list[Any]:
    """Values of sort keys from a row selected with `sort_columns` (plain fields by name)."""
    return [row[sort_column(i, n)] for i, n in enumerate(names)]


def sort_column(index: int, name: str) -> str:
    """The column a sort key is read from in a selected row: itself, or `_sort<i>` for an expression."""
    return name if "." not in name and not name.startswith("@") else f"_sort{index}"
