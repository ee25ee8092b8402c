"""The audit module and its SQL: canonical form, chains, verify against tampering, triggers, concurrency."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snackbase import audit, audit_views
from snackbase.audit import Actor, RequestMeta
from snackbase.db import connect, fetch_all, fetch_one
from snackbase.errors import ApiError
from snackbase.migrations import migrate
from snackbase.pii import mask_value

ROOT = Path(__file__).resolve().parent.parent
ALICE = Actor("0190a0b0-0000-7000-8000-000000000001", "alice@example.com", "admin", "token")
META = RequestMeta("req-1", "127.0.0.1", "pytest")


def open_db(path: Path) -> apsw.Connection:
    conn = connect(path)
    migrate(conn)
    return conn


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "snackbase.db"


@pytest.fixture
def conn(db_path: Path) -> apsw.Connection:
    return open_db(db_path)


def add(conn: apsw.Connection, account: str = "AB1234", action: str = "record.update", **kw: Any) -> int:
    with conn:
        return audit.append(conn, account_id=account, actor=ALICE, action=action, meta=META, **kw)


def build(conn: apsw.Connection, accounts: list[str]) -> list[int]:
    return [
        add(conn, acc, collection="notes", record_id=f"r{i}", changes={"n": {"old": i, "new": i + 1}})
        for i, acc in enumerate(accounts)
    ]


def drop_triggers(conn: apsw.Connection) -> None:
    """What an attacker with write access to the database file can do."""
    names = [r["name"] for r in fetch_all(conn, "SELECT name FROM sqlite_schema WHERE type = 'trigger'")]
    for name in names:
        if name.startswith("audit_"):
            conn.execute(f'DROP TRIGGER "{name}"')


def row(conn: apsw.Connection, seq: int) -> dict[str, Any]:
    found = fetch_one(conn, f"SELECT {', '.join(audit.COLUMNS)} FROM audit_log WHERE seq = ?", (seq,))
    assert found is not None
    return found


# --- canonical form ---------------------------------------------------------------------------

GOLDEN_ENTRY: dict[str, Any] = {
    "seq": 42, "account_id": "AB1234", "account_seq": 7, "occurred_at": "2026-11-27T09:10:10.123Z",
    "actor_user_id": "0190a0b0-0000-7000-8000-000000000001", "actor_email": "alice@example.com",
    "actor_role": "admin", "auth_method": "token", "action": "record.update", "collection": "samples",
    "record_id": "0190a0b0-0000-7000-8000-0000000000aa",
    "changes": '{"ph":{"new":7.5,"old":7.25},"title":{"new":"Lösung \\"B\\"","old":"Lösung A"}}',
    "reason": "Correction: pH meter recalibrated", "request_id": "req-1", "ip": "10.0.0.5",
    "user_agent": "curl/8.5", "extra": None, "prev_hash": "ab" * 32,
}  # fmt: skip
GOLDEN_CANONICAL = (
    '{"account_id":"AB1234","account_seq":7,"action":"record.update","actor_email":"alice@example.com",'
    '"actor_role":"admin","actor_user_id":"0190a0b0-0000-7000-8000-000000000001","auth_method":"token",'
    '"changes":"{\\"ph\\":{\\"new\\":7.5,\\"old\\":7.25},\\"title\\":{\\"new\\":\\"Lösung \\\\\\"B\\\\\\"\\",'
    '\\"old\\":\\"Lösung A\\"}}","collection":"samples","extra":null,"ip":"10.0.0.5",'
    '"occurred_at":"2026-11-27T09:10:10.123Z","prev_hash":"' + "ab" * 32 + '",'
    '"reason":"Correction: pH meter recalibrated","record_id":"0190a0b0-0000-7000-8000-0000000000aa",'
    '"request_id":"req-1","seq":42,"user_agent":"curl/8.5"}'
).encode()


def test_canonical_json_golden_bytes() -> None:
    assert audit.canonical_json(GOLDEN_ENTRY) == GOLDEN_CANONICAL


def test_entry_hash_golden() -> None:
    assert audit.entry_hash(GOLDEN_ENTRY) == PINNED_HASH
    assert audit.entry_hash({**GOLDEN_ENTRY, "hash": "ignored"}) == PINNED_HASH


def test_docs_recipe_recomputes_the_hash() -> None:
    """The few lines in docs/audit.md, with nothing of ours: Python's json and hashlib."""
    fields = [k for k in GOLDEN_ENTRY if k != "hash"]
    text = json.dumps(
        {k: GOLDEN_ENTRY[k] for k in fields}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == PINNED_HASH


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(audit.CANONICAL_FIELDS), st.text() | st.none(), min_size=0))
def test_canonical_json_equals_python_json(values: dict[str, Any]) -> None:
    entry = {**GOLDEN_ENTRY, **{k: v for k, v in values.items() if k not in ("seq", "account_seq")}}
    try:
        ours = audit.canonical_json(entry)
    except Exception:  # lone surrogates cannot be UTF-8: both sides refuse them
        with pytest.raises(UnicodeEncodeError):
            json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        return
    theirs = json.dumps(
        {k: entry[k] for k in audit.CANONICAL_FIELDS},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    assert ours == theirs


@pytest.mark.parametrize("bad", [True, 1.0, "7"])
def test_canonical_json_refuses_non_integer_positions(bad: Any) -> None:
    with pytest.raises(TypeError):
        audit.canonical_json({**GOLDEN_ENTRY, "seq": bad})


PINNED_HASH = hashlib.sha256(GOLDEN_CANONICAL).hexdigest()


def test_pinned_hash_value() -> None:
    # The literal guards against an accidental change of the canonical bytes *and* of this test.
    assert PINNED_HASH == "ed48ffd7ac930cbc30724cdb18045d4284bf44e47ea2bc00a9b82ca7efc50a08"


# --- appending and chains ---------------------------------------------------------------------


def test_one_chain_per_account(conn: apsw.Connection) -> None:
    seqs = build(conn, ["AB1234", "CD5678", "AB1234", "CD5678", "AB1234"])
    assert seqs == [1, 2, 3, 4, 5]
    rows = [row(conn, s) for s in seqs]
    assert [r["account_seq"] for r in rows] == [1, 1, 2, 2, 3]
    assert rows[0]["prev_hash"] == rows[1]["prev_hash"] == audit.GENESIS_HASH
    assert rows[2]["prev_hash"] == rows[0]["hash"] and rows[4]["prev_hash"] == rows[2]["hash"]
    assert rows[3]["prev_hash"] == rows[1]["hash"]
    for r in rows:
        assert audit.entry_hash(r) == r["hash"]
    assert audit.verify(conn) == audit.VerifyResult(True, 5)
    assert audit.verify(conn, "CD5678") == audit.VerifyResult(True, 2)
    heads = fetch_all(conn, "SELECT account_id, account_seq, seq, hash FROM audit_heads ORDER BY account_id")
    assert heads == [
        {"account_id": "AB1234", "account_seq": 3, "seq": 5, "hash": rows[4]["hash"]},
        {"account_id": "CD5678", "account_seq": 2, "seq": 4, "hash": rows[3]["hash"]},
    ]


def test_entry_contents(conn: apsw.Connection) -> None:
    changes = audit.diff({"title": "a", "n": 1, "updated_at": "x"}, {"title": "b", "n": 1, "updated_at": "y"})
    seq = add(
        conn,
        action="record.update",
        collection="notes",
        record_id="r1",
        changes=changes,
        reason="typo",
        extra={"z": 1, "a": [1, 2]},
    )
    stored = row(conn, seq)
    assert stored["changes"] == '{"title":{"new":"b","old":"a"}}'
    assert stored["extra"] == '{"a":[1,2],"z":1}'
    assert stored["actor_email"] == "alice@example.com" and stored["auth_method"] == "token"
    assert (stored["request_id"], stored["ip"], stored["user_agent"]) == ("req-1", "127.0.0.1", "pytest")
    assert stored["occurred_at"].endswith("Z") and len(stored["occurred_at"]) == 24
    api = audit_views.to_api(stored)
    assert api["actor"] == {
        "user_id": ALICE.user_id,
        "email": ALICE.email,
        "role": "admin",
        "method": "token",
    }
    assert api["target"] == {"collection": "notes", "record_id": "r1"}
    assert api["changes"] == {"title": {"old": "a", "new": "b"}} and api["extra"] == {"a": [1, 2], "z": 1}


def test_append_outside_a_transaction_is_refused(conn: apsw.Connection) -> None:
    with pytest.raises(RuntimeError, match="transaction"):
        audit.append(conn, account_id="AB1234", actor=ALICE, action="x")


def test_failed_transaction_leaves_no_entry(conn: apsw.Connection) -> None:
    build(conn, ["AB1234"])
    head_before = fetch_all(conn, "SELECT * FROM audit_heads")
    with pytest.raises(ValueError), conn:
        audit.append(conn, account_id="AB1234", actor=ALICE, action="record.create")
        audit.append(conn, account_id="EF0001", actor=ALICE, action="record.create")
        raise ValueError("the change itself failed")
    assert fetch_all(conn, "SELECT seq FROM audit_log") == [{"seq": 1}]
    assert fetch_all(conn, "SELECT * FROM audit_heads") == head_before
    assert audit.verify(conn).ok
    assert add(conn) == 2  # the rolled-back seq is simply reused: no gap in a chain


def test_failed_savepoint_inside_a_transaction_rolls_back_only_its_entry(conn: apsw.Connection) -> None:
    with conn:
        audit.append(conn, account_id="AB1234", actor=ALICE, action="a")
        with pytest.raises(ValueError), conn:
            audit.append(conn, account_id="AB1234", actor=ALICE, action="b")
            raise ValueError
        audit.append(conn, account_id="AB1234", actor=ALICE, action="c")
    assert [r["action"] for r in fetch_all(conn, "SELECT action FROM audit_log ORDER BY seq")] == ["a", "c"]
    assert audit.verify(conn).ok


# --- append-only triggers ---------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "UPDATE audit_log SET reason = 'nicer' WHERE seq = 1",
    "UPDATE audit_log SET hash = hash",
    "DELETE FROM audit_log WHERE seq = 2",
    "DELETE FROM audit_log",
    "DELETE FROM audit_heads",
    "UPDATE audit_heads SET account_seq = 1, seq = 1, hash = (SELECT hash FROM audit_log WHERE seq = 1)",
    "UPDATE audit_heads SET hash = 'x'",
    "INSERT OR REPLACE INTO audit_heads VALUES ('AB1234', 0, 0, '" + "0" * 64 + "')",
])  # fmt: skip
def test_triggers_refuse_changes(conn: apsw.Connection, sql: str) -> None:
    build(conn, ["AB1234", "AB1234"])
    before = fetch_all(conn, "SELECT * FROM audit_log"), fetch_all(conn, "SELECT * FROM audit_heads")
    with pytest.raises(apsw.ConstraintError):
        conn.execute(sql)
    assert (
        fetch_all(conn, "SELECT * FROM audit_log"),
        fetch_all(conn, "SELECT * FROM audit_heads"),
    ) == before


def test_an_entry_must_extend_the_head(conn: apsw.Connection) -> None:
    """A writer holding a stale head (the way a chain would fork) is refused by the database itself."""
    build(conn, ["AB1234", "AB1234"])
    forged = {**row(conn, 2), "seq": 3}  # same position and prev_hash as entry 2: a fork
    forged["hash"] = audit.entry_hash(forged)
    with pytest.raises(apsw.ConstraintError):
        conn.execute(audit._INSERT_ENTRY, forged)
    first = {**row(conn, 1), "seq": 3, "account_seq": 3}  # right position, wrong prev_hash
    with pytest.raises(apsw.ConstraintError):
        conn.execute(audit._INSERT_ENTRY, first)
    assert audit.verify(conn).ok


# --- verify detects tampering with the file ----------------------------------------------------


def tampered(conn: apsw.Connection, *statements: str) -> audit.VerifyResult:
    drop_triggers(conn)
    for sql in statements:
        conn.execute(sql)
    return audit.verify(conn)


@pytest.mark.parametrize(("statements", "bad_seq", "words"), [
    (["UPDATE audit_log SET reason = 'a better reason' WHERE seq = 3"], 3, "edited"),
    (["UPDATE audit_log SET changes = '{\"n\":{\"new\":9,\"old\":2}}' WHERE seq = 3"], 3, "edited"),
    (["UPDATE audit_log SET occurred_at = '2020-01-01T00:00:00.000Z' WHERE seq = 1"], 1, "edited"),
    (["UPDATE audit_log SET account_id = 'CD5678' WHERE seq = 5"], 5, "deleted"),
    (["DELETE FROM audit_log WHERE seq = 3"], 5, "position"),
    (["DELETE FROM audit_log WHERE seq = 5"], 5, "deleted"),
    (["DELETE FROM audit_log WHERE account_id = 'CD5678'"], 4, "entry is gone"),
    (["DELETE FROM audit_log WHERE seq = 5", "UPDATE audit_heads SET account_seq = 2, seq = 3, "
      "hash = (SELECT hash FROM audit_log WHERE seq = 3) WHERE account_id = 'AB1234'"], None, None),
    # Reordering: entries 1 and 3 swap their places in the chain.
    (["UPDATE audit_log SET account_seq = -1 WHERE seq = 1",
      "UPDATE audit_log SET account_seq = 1 WHERE seq = 3",
      "UPDATE audit_log SET account_seq = 2 WHERE account_seq = -1"], 3, "prev_hash"),
    # Reordering by global seq only: entries 3 and 5 swap their seq numbers.
    (["UPDATE audit_log SET seq = 100 WHERE seq = 3", "UPDATE audit_log SET seq = 3 WHERE seq = 5",
      "UPDATE audit_log SET seq = 5 WHERE seq = 100"], 5, "edited"),
    (["UPDATE audit_log SET hash = (CASE WHEN hash LIKE 'f%' THEN 'e' ELSE 'f' END) || substr(hash, 2) "
      "WHERE seq = 3"], 3, "edited"),
])  # fmt: skip
def test_verify_detects_tampering(
    conn: apsw.Connection, statements: list[str], bad_seq: int | None, words: str | None
) -> None:
    build(conn, ["AB1234", "CD5678", "AB1234", "CD5678", "AB1234"])
    result = tampered(conn, *statements)
    if bad_seq is None:  # truncating a chain *and* moving its head back is the one undetectable edit
        assert result.ok  # (docs/audit.md: anchor the head hash outside the database)
        return
    assert not result.ok and result.first_bad_seq == bad_seq, result
    assert words in (result.problem or "")


def test_verify_detects_an_inserted_fake_entry(conn: apsw.Connection) -> None:
    build(conn, ["AB1234", "AB1234", "AB1234"])
    drop_triggers(conn)
    # A fake at position 2, with a correct prev_hash and a correct hash of its own; later entries moved up.
    conn.execute("UPDATE audit_log SET account_seq = account_seq + 10 WHERE account_seq >= 2")
    conn.execute("UPDATE audit_log SET account_seq = account_seq - 9 WHERE account_seq >= 12")
    fake = {**row(conn, 1), "seq": 9, "account_seq": 2, "prev_hash": row(conn, 1)["hash"], "reason": "fake"}
    fake["hash"] = audit.entry_hash(fake)
    conn.execute(audit._INSERT_ENTRY, fake)
    result = audit.verify(conn)
    assert not result.ok and result.first_bad_seq == 2 and "prev_hash" in (result.problem or "")


def test_verify_detects_a_fake_appended_without_its_head(conn: apsw.Connection) -> None:
    build(conn, ["AB1234", "AB1234"])
    drop_triggers(conn)
    fake = {**row(conn, 2), "seq": 3, "account_seq": 3, "prev_hash": row(conn, 2)["hash"], "action": "x"}
    fake["hash"] = audit.entry_hash(fake)
    conn.execute(audit._INSERT_ENTRY, fake)
    result = audit.verify(conn)
    assert (result.ok, result.first_bad_seq) == (False, 3) and "head" in (result.problem or "")


def test_verify_reports_the_smallest_bad_seq_and_counts_entries(conn: apsw.Connection) -> None:
    build(conn, ["AB1234", "CD5678", "AB1234", "CD5678"])
    result = tampered(conn, "UPDATE audit_log SET reason = 'x' WHERE seq IN (2, 3)")
    assert (result.first_bad_seq, result.account_id, result.entries_checked) == (2, "CD5678", 4)
    assert audit.verify(conn, "AB1234").first_bad_seq == 3


# --- concurrency ------------------------------------------------------------------------------


def test_two_connections_alternating_never_fork(db_path: Path) -> None:
    first, second = open_db(db_path), open_db(db_path)
    for i in range(50):
        add(first if i % 2 else second, "AB1234" if i % 3 else "CD5678")
    assert audit.verify(first) == audit.VerifyResult(True, 50)


def test_a_stale_snapshot_fails_instead_of_forking(db_path: Path) -> None:
    """A writer that read the head before another writer committed cannot append from that old view."""
    first, second = open_db(db_path), open_db(db_path)
    add(first)
    with pytest.raises(apsw.BusyError), second:
        second.execute("SELECT count(*) FROM audit_log").fetchall()  # second's snapshot starts here
        add(first)
        audit.append(second, account_id="AB1234", actor=ALICE, action="stale")
    assert audit.verify(first) == audit.VerifyResult(True, 2)


def _append_many(path: str, worker: int, count: int) -> None:
    conn = connect(path)
    for i in range(count):
        with conn:
            audit.append(conn, account_id=("AB1234", "CD5678")[i % 2], actor=ALICE, action=f"w{worker}.{i}")
    conn.close()


def test_concurrent_processes_never_fork(db_path: Path) -> None:
    open_db(db_path).close()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(str(db_path), w, 150)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    conn = open_db(db_path)
    assert audit.verify(conn) == audit.VerifyResult(True, 600)
    positions = fetch_all(
        conn,
        "SELECT account_id, count(*) AS n, max(account_seq) AS top FROM audit_log "
        "GROUP BY account_id ORDER BY account_id",
    )
    assert positions == [
        {"account_id": "AB1234", "n": 300, "top": 300},
        {"account_id": "CD5678", "n": 300, "top": 300},
    ]


# --- reasons ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "stored"), [
    (None, None), ("", None), ("   ", None), ("  typo fixed ", "typo fixed"), ("é" * 1000, "é" * 1000),
    ("Korrektur: Messgerät neu kalibriert 🧪", "Korrektur: Messgerät neu kalibriert 🧪"),
])  # fmt: skip
def test_valid_reasons(given: str | None, stored: str | None) -> None:
    assert audit.validate_reason(given) == stored


@pytest.mark.parametrize(
    "given", ["x" * 1001, "a\nb", "tab\there", "nul\x00", "del\x7f", "c1\x85c1", "bidi \u202eevil", 5, ["a"]]
)
def test_invalid_reasons(given: Any) -> None:
    with pytest.raises(ApiError) as caught:
        audit.validate_reason(given)
    assert (caught.value.status, caught.value.code) == (400, "invalid_reason")


class FakeRequest:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


@pytest.mark.parametrize(("header", "body", "expected"), [
    (None, None, None),
    ("plain reason", None, "plain reason"),
    ("Messger%C3%A4t%20kalibriert", None, "Messgerät kalibriert"),
    ("Messgerät".encode().decode("latin-1"), None, "Messgerät"),  # raw UTF-8 bytes in the header
    ("50% dilution", None, "50% dilution"),
    ("from header", {"_reason": "from body", "x": 1}, "from body"),
    (None, {"x": 1}, None),
])  # fmt: skip
def test_reason_from(header: str | None, body: dict[str, Any] | None, expected: str | None) -> None:
    request = FakeRequest({} if header is None else {"x-audit-reason": header})
    assert audit_views.reason_from(request, body) == expected
    assert body is None or "_reason" not in body  # taken out, so record validation never sees it


@pytest.mark.parametrize(
    ("header", "body"),
    [("bad%0Aline", None), ("%FF%FE", None), (None, {"_reason": 3}), (None, {"_reason": "x" * 1001})],
)
def test_reason_from_refuses(header: str | None, body: dict[str, Any] | None) -> None:
    request = FakeRequest({} if header is None else {"x-audit-reason": header})
    with pytest.raises(ApiError) as caught:
        audit_views.reason_from(request, body)
    assert caught.value.code == "invalid_reason"


def test_require_reason() -> None:
    assert audit.require_reason("why") == "why"
    with pytest.raises(ApiError) as caught:
        audit.require_reason(None)
    assert (caught.value.status, caught.value.code) == (400, "reason_required")


# --- diff, actors, masks -----------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "expected"), [
    (None, {"a": 1, "id": "x", "created_at": "t"}, {"a": {"old": None, "new": 1}}),
    ({"a": 1, "b": "x"}, None, {"a": {"old": 1, "new": None}, "b": {"old": "x", "new": None}}),
    ({"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"b": {"old": "x", "new": "y"}}),
    ({"flag": 1}, {"flag": True}, {"flag": {"old": 1, "new": True}}),
    ({"n": 1}, {"n": 1.0}, {"n": {"old": 1, "new": 1.0}}),
    ({"tags": ["a"]}, {"tags": ["a"]}, {}),
    ({"a": 1}, {"a": 1, "updated_at": "later"}, {}),
])  # fmt: skip
def test_diff(old: dict[str, Any] | None, new: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    assert audit.diff(old, new) == expected


def test_diff_marks_pii_fields() -> None:
    changes = audit.diff({"email": "a@x.io", "t": 1}, {"email": "b@x.io", "t": 2}, pii={"email": "email"})
    assert changes == {
        "email": {"old": "a@x.io", "new": "b@x.io", "mask": "email"},
        "t": {"old": 1, "new": 2},
    }


def test_actor_from_auth() -> None:
    from types import SimpleNamespace

    assert audit_views.actor_from_auth(None) == audit.ANONYMOUS_ACTOR
    user = SimpleNamespace(user_id="u", email="e@x.io", role="member", is_superadmin=False, method="token")
    assert audit_views.actor_from_auth(user) == Actor("u", "e@x.io", "member", "token")
    root = SimpleNamespace(user_id="s", email="s@x.io", role="admin", is_superadmin=True, method="token")
    assert audit_views.actor_from_auth(root).role == "superadmin"


@pytest.mark.parametrize(("kind", "value", "shown"), [
    ("email", "jane.doe@example.com", "j***@example.com"), ("phone", "+1 (555) 123-4567", "******4567"),
    ("ssn", "123-45-6789", "***-**-6789"), ("name", "Jane Q Doe", "J. Q. D."), ("full", "secret", "******"),
    ("email", "not-an-email", "******"), ("phone", "12", "******"), ("full", 42, "******"),
    ("email", None, None),
])  # fmt: skip
def test_mask_value(kind: str, value: Any, shown: Any) -> None:
    assert mask_value(kind, value) == shown


def fake_collections_db() -> apsw.Connection:
    """A stand-in for the collections table (004_collections.sql): name + fields JSON."""
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE collections (name TEXT PRIMARY KEY, fields TEXT NOT NULL)")
    fields = [
        {"name": "email", "type": "email", "pii": True, "mask": "email"},
        {"name": "ssn", "type": "text", "pii": True},
        {"name": "title", "type": "text", "pii": False},
    ]
    conn.execute("INSERT INTO collections VALUES ('patients', ?), ('notes', '[]')", (json.dumps(fields),))
    return conn


def test_schema_masker_and_mask_changes() -> None:
    masker = audit_views.schema_masker(fake_collections_db())
    assert masker is not None
    entries = [
        {"target": {"collection": "patients"}, "changes": {
            "email": {"old": None, "new": "jane@example.com"}, "ssn": {"old": "123-45-6789", "new": None},
            "title": {"old": "a", "new": "b"}}},
        {"target": {"collection": "gone"}, "changes": {"phone": {"old": "555 1234567", "new": None,
                                                                 "mask": "phone"}}},
        {"target": {"collection": None}, "changes": None},
    ]  # fmt: skip
    audit_views.mask_changes(entries, masker)
    assert entries[0]["changes"] == {
        "email": {"old": None, "new": "j***@example.com"},
        "ssn": {"old": "******", "new": None},
        "title": {"old": "a", "new": "b"},
    }
    assert entries[1]["changes"]["phone"] == {"old": "******4567", "new": None, "mask": "phone"}
    assert entries[2]["changes"] is None


def test_schema_masker_without_collections() -> None:
    assert audit_views.schema_masker(apsw.Connection(":memory:")) is None


def test_mask_row_changes_for_exports() -> None:
    masker = audit_views.schema_masker(fake_collections_db())
    stored = {"collection": "patients", "changes": '{"email":{"new":"jane@example.com","old":null}}'}
    assert (
        audit_views.mask_row_changes(stored, masker)["changes"]
        == '{"email":{"new":"j***@example.com","old":null}}'
    )
    assert stored["changes"].startswith('{"email":{"new":"jane')  # the input row is left as it was


# --- CLI --------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snackbase", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"SNACKBASE_ENVIRONMENT": "testing", "PATH": ""},
    )


def test_cli_verify_exit_codes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    conn = open_db(data_dir / "snackbase.db")
    build(conn, ["AB1234", "CD5678", "AB1234"])
    conn.close()
    ok = run_cli("audit", "verify", "--data-dir", str(data_dir))
    assert (ok.returncode, ok.stdout.strip()) == (0, "ok, 3 entries"), ok.stderr
    conn = connect(data_dir / "snackbase.db")
    tampered(conn, "UPDATE audit_log SET reason = 'rewritten' WHERE seq = 3")
    conn.close()
    bad = run_cli("audit", "verify", "--data-dir", str(data_dir))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("snackbase: error: audit chain broken at seq 3 (account AB1234): ")
    assert "edited" in bad.stderr and bad.stderr.count("\n") == 1
    other = run_cli("audit", "verify", "--data-dir", str(data_dir), "--account", "cd5678")
    assert (other.returncode, other.stdout.strip()) == (0, "ok, 1 entries")


def test_cli_verify_without_a_database(tmp_path: Path) -> None:
    result = run_cli("audit", "verify", "--data-dir", str(tmp_path / "none"))
    assert result.returncode == 1 and "no database" in result.stderr


def test_docs_verification_recipe_runs(tmp_path: Path) -> None:
    """The independent-verification lines in docs/audit.md work on a real database, and catch an edit."""
    import re

    recipe = re.findall(
        r"```python\n(.*?)```", (ROOT / "docs" / "audit.md").read_text(encoding="utf-8"), re.S
    )[0]
    (tmp_path / "sb_data").mkdir()
    conn = open_db(tmp_path / "sb_data" / "snackbase.db")
    build(conn, ["AB1234", "CD5678", "AB1234"])
    add(conn, changes={"v": {"old": 0.1, "new": 'é\n"q"'}}, reason="Lösung")

    def run_recipe() -> subprocess.CompletedProcess[str]:
        # In a process of its own, as an auditor runs it: Python's sqlite3 is another copy of SQLite,
        # and two copies in one process release each other's POSIX file locks on close.
        return subprocess.run([sys.executable, "-c", recipe], cwd=tmp_path, capture_output=True, text=True)

    verified = run_recipe()
    assert verified.returncode == 0 and verified.stdout.strip() == "ok", verified.stderr
    tampered(conn, "UPDATE audit_log SET reason = 'other' WHERE seq = 4")
    caught = run_recipe()
    assert caught.returncode != 0 and "AssertionError: edited entry at seq 4" in caught.stderr


def test_record_history(conn: apsw.Connection) -> None:
    add(conn, collection="notes", record_id="r1", action="record.create")
    add(conn, "CD5678", collection="notes", record_id="r1", action="record.create")  # another tenant
    add(conn, collection="notes", record_id="r2", action="record.create")
    add(conn, collection="notes", record_id="r1", action="record.delete")
    history = audit_views.record_history(conn, "AB1234", "notes", "r1")
    assert [(h["seq"], h["action"]) for h in history] == [(1, "record.create"), (4, "record.delete")]
    assert audit_views.record_history(conn, "AB1234", "other", "r1") == []
