"""Who may receive a realtime event, and the record as each subscriber reads it (the broker's Gate).

An event reaches a client when, for one of its matching topics, the record as committed (for a
delete: as it was before) passes the collection's view rule AND the topic's filter, both compiled for
that client exactly as a read would compile them (`rules.rule_clause`, `rules.filter_clause` with the
presenter's hidden fields). The record is evaluated as a one-row CTE named like the table alias — the
same way the write path checks create rules against values not in the table — so a delete can be
judged on values that no longer exist. The payload is built by the one presenter (`present_json`,
"view": field access and PII masks) for that client.

Fan-out stays cheap for thousands of subscribers: clients with the same rights (user, account, role,
PII access) share one compiled rule and one presented payload per event, and equal compiled
conditions (the same SQL and parameters) are evaluated once per event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import apsw
import msgspec

from snackbase.collections import Registry
from snackbase.db import fetch_value
from snackbase.errors import ApiError, field_error
from snackbase.pii import hidden_fields
from snackbase.presenter import present_json
from snackbase.realtime import Client, Topic
from snackbase.realtime_transport import Published
from snackbase.rules import ALIAS, ALLOW_ALL, Caller, RecordResolver, filter_clause, rule_clause, where_clause
from snackbase.schema import Collection, quote_ident

_encode = msgspec.json.Encoder().encode
MAX_FILTER_LENGTH = 2_000
_UNDECIDED: Any = object()


class Viewer:
    """A client as the rules see it: its caller, and what ends its right to events. `key` names its
    rights: clients with equal keys are judged and presented once per event."""

    __slots__ = ("_caller", "expires_at", "key", "session_id")

    def __init__(
        self, caller: Caller, session_id: str | None = None, expires_at: float = float("inf")
    ) -> None:
        self.session_id = session_id
        self.expires_at = expires_at  # the access token's expiry (epoch seconds)
        self.caller = caller

    @property
    def caller(self) -> Caller:
        return self._caller

    @caller.setter
    def caller(self, caller: Caller) -> None:
        self._caller = caller
        key = (caller.user_id, caller.account_id, caller.role, caller.is_superadmin, caller.pii_access)
        self.key = _keys.setdefault(key, key)


# Interned rights keys, so that equal rights are recognised by identity (few distinct values: one per
# user and role, plus one per account for anonymous clients).
_keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}


class RecordGate:
    def __init__(self, conn: apsw.Connection, registry: Registry) -> None:
        self.conn = conn
        self.registry = registry

    # --- at subscribe time ---------------------------------------------------------------------

    def validate(self, viewer: Viewer, raw_topics: Any) -> list[Topic]:
        """Topics from a request body: names, collections, the caller's right to view, filters."""
        if not isinstance(raw_topics, list):
            raise _bad("topics", "topics must be a list of topic names or {topic, filter} objects.")
        topics = []
        for index, raw in enumerate(raw_topics):
            topic = _parse_topic(raw, f"topics.{index}")
            collection = self.registry.get(self.conn, topic.collection)  # 404 for an unknown one
            caller = viewer.caller
            if caller.account_id is None and not caller.is_superadmin:
                raise ApiError(
                    401, "unauthorized", "Authenticate, or name the account (X-Account-ID or `account`)."
                )
            rule_clause(collection, "view", RecordResolver(collection, caller))  # 403 without the right
            if topic.filter:
                filter_clause(topic.filter, self._filter_resolver(collection, caller))  # 400 invalid_filter
            topics.append(topic)
        return topics

    @staticmethod
    def _filter_resolver(collection: Collection, caller: Caller) -> RecordResolver:
        return RecordResolver(collection, caller, hidden=hidden_fields(collection, caller, "view"))

    # --- per event batch -----------------------------------------------------------------------

    def check(self, clients: Iterable[Client]) -> None:
        """Closes clients whose token expired or whose session was revoked (logout, password change,
        deactivation, refresh-token reuse): one query for all the sessions involved."""
        now = time.time()
        by_session: dict[str, list[Client]] = {}
        for client in clients:
            viewer: Viewer = client.viewer
            if client.closed or viewer.session_id is None:
                continue
            if viewer.expires_at <= now:
                client.close("token_expired", "The access token has expired; reconnect with a new one.")
                continue
            by_session.setdefault(viewer.session_id, []).append(client)
        if not by_session:
            return
        live = {row[0]: row for row in self.conn.execute(_LIVE_SESSIONS, (_json(list(by_session)), _now()))}
        for session_id, members in by_session.items():
            row = live.get(session_id)
            for client in members:
                if row is None:
                    client.close("session_ended", "The session has ended; log in again.")
                else:
                    _refresh(client.viewer, row)

    def render(
        self, event: Published, clients: list[Client], topics: list[tuple[Topic, ...]]
    ) -> list[tuple[bytes, list[Client]]]:
        try:
            collection = self.registry.get(self.conn, event.collection)
        except ApiError:  # deleted since
            return []
        row = _stored(event.record)
        verdicts: dict[tuple[str, tuple[Any, ...]], bool] = {}
        # One decision per (rights, topics) pair: thousands of subscribers usually make a handful.
        # Keyed by the ids of the interned key and topic tuples, in a dict of dicts: no tuple is
        # allocated per client (see Broker.deliver).
        decided: dict[int, dict[int, list[Client] | None]] = {}
        groups: list[tuple[bytes, list[Client]]] = []
        for client, matched in zip(clients, topics, strict=True):
            if client.closed:
                continue
            viewer: Viewer = client.viewer
            by_topics = decided.get(id(viewer.key))
            if by_topics is None:
                by_topics = decided[id(viewer.key)] = {}
            members = by_topics.get(id(matched), _UNDECIDED)
            if members is _UNDECIDED:
                payload = self._decide(collection, viewer.caller, event, row, matched, verdicts)
                members = by_topics[id(matched)] = None if payload is None else []
                if payload is not None and members is not None:
                    groups.append((payload, members))
            if members is not None:
                members.append(client)
        return groups

    def _decide(
        self, collection: Collection, caller: Caller, event: Published, row: dict[str, Any],
        topics: tuple[Topic, ...], verdicts: dict[tuple[str, tuple[Any, ...]], bool],
    ) -> bytes | None:  # fmt: skip
        """The payload for a caller with these topics, or None when none of them admits the record."""
        if caller.account_id is not None and caller.account_id != event.account_id:
            return None
        try:
            rule = rule_clause(collection, "view", RecordResolver(collection, caller))
        except ApiError:
            return None  # the view rule is null (superadmins only) or cannot be evaluated
        filters: dict[str | None, tuple[str, list[Any]] | None] = {}
        if not any(self._holds(collection, caller, row, rule, t.filter, filters, verdicts) for t in topics):
            return None
        return self._payload(collection, caller, event)

    def _holds(
        self, collection: Collection, caller: Caller, row: dict[str, Any], rule: tuple[str, list[Any]],
        text: str | None, filters: dict[str | None, tuple[str, list[Any]] | None],
        verdicts: dict[tuple[str, tuple[Any, ...]], bool],
    ) -> bool:  # fmt: skip
        if text not in filters:
            try:
                filters[text] = (
                    filter_clause(text, self._filter_resolver(collection, caller)) if text else ALLOW_ALL
                )
            except ApiError:  # a field the filter names was removed or hidden since: no events
                filters[text] = None
        clause = filters[text]
        if clause is None:
            return False
        where, params = where_clause(rule, clause)
        if not where:
            return True
        key = (where, tuple(params))
        if key not in verdicts:
            verdicts[key] = _row_matches(self.conn, row, where, params)
        return verdicts[key]

    def _payload(self, collection: Collection, caller: Caller, event: Published) -> bytes:
        [record] = present_json(self.conn, self.registry, collection, caller, "view", [event.record])
        return _encode(
            {"type": event.action, "collection": event.collection, "record": record, "id": event.seq}
        )


def _row_matches(conn: apsw.Connection, row: dict[str, Any], where: str, params: list[Any]) -> bool:
    """The condition evaluated against one record given by value, as a one-row CTE aliased like the table."""
    columns, marks = ", ".join(quote_ident(c) for c in row), ", ".join("?" * len(row))
    sql = f"WITH {ALIAS}({columns}) AS (VALUES ({marks})) SELECT EXISTS (SELECT 1 FROM {ALIAS}{where})"
    return bool(fetch_value(conn, sql, [*row.values(), *params]))


def _stored(record: dict[str, Any]) -> dict[str, Any]:
    """JSON values back into their stored form (booleans as 0/1, lists and objects as JSON text)."""
    return {
        name: int(v) if isinstance(v, bool) else _encode(v).decode() if isinstance(v, (list, dict)) else v
        for name, v in record.items()
    }


def _parse_topic(raw: Any, where: str) -> Topic:
    if isinstance(raw, str):
        name, text = raw, None
    elif isinstance(raw, dict) and isinstance(raw.get("topic"), str) and set(raw) <= {"topic", "filter"}:
        name, text = raw["topic"], raw.get("filter")
        if text is not None and (not isinstance(text, str) or len(text) > MAX_FILTER_LENGTH):
            raise _bad(where, f"filter must be a string of at most {MAX_FILTER_LENGTH} characters.")
    else:
        raise _bad(where, "A topic is 'collection', 'collection/<id>' or {\"topic\": …, \"filter\": …}.")
    collection, _, record_id = name.partition("/")
    if not collection or len(name) > 200 or "/" in record_id:
        raise _bad(where, f"'{name[:64]}' is not a topic: use 'collection' or 'collection/<id>'.")
    return Topic(collection, record_id or None, text.strip() or None if text else None)


def _bad(where: str, message: str) -> ApiError:
    return ApiError(400, "bad_request", message, field_error(where, "invalid_topic", message))


def _refresh(viewer: Viewer, row: tuple[Any, ...]) -> None:
    """A role or PII-access change applies to the next event, as it does to the next request."""
    _, account_id, email, role, pii_access = row
    c = viewer.caller
    now = (account_id, email, role, bool(pii_access))
    if not c.is_superadmin and (c.account_id, c.email, c.role, c.pii_access) != now:
        viewer.caller = msgspec.structs.replace(
            c, account_id=account_id, email=email, role=role, pii_access=bool(pii_access)
        )


def _json(values: list[str]) -> str:
    return _encode(values).decode()


def _now() -> str:
    from snackbase.times import now_iso

    return now_iso()


# The live sessions among a list (the same conditions as an authenticated request's check).
_LIVE_SESSIONS = """
    SELECT s.id, u.account_id, u.email, u.role, EXISTS (
        SELECT 1 FROM group_members m JOIN groups g ON g.id = m.group_id
        WHERE m.user_id = u.id AND g.name = 'pii_access') AS pii_access
    FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE s.id IN (SELECT value FROM json_each(?)) AND s.revoked_at IS NULL AND s.expires_at > ?
      AND u.is_active = 1
"""
