"""The audit trail's chain: entries, canonical JSON, the per-account hash chain, the reason for a
change, diffs, verify. Its HTTP side (a request's reason and metadata, the API shape of entries, PII
masks, a record's history) is `snackbase.audit_views`.

Every write path calls `append` inside its own unit of work, after (or before) its change and before the
commit, so an entry exists exactly when its change does. Each account has one chain: an entry's
`prev_hash` is the `hash` of the account's previous entry (64 zeros for the first) and its `hash` is the
SHA-256 of its canonical JSON (`canonical_json`, documented byte for byte in docs/audit.md).

The end of each chain lives in `audit_heads`, so an append is two statements and one SHA-256: lock and
read the head (a no-op upsert, which takes SQLite's write lock first, so a concurrent writer in another
process waits instead of reading the same head; a plain read when the transaction holds the lock
already), then insert; triggers in 003_audit.sql refuse an entry that does not extend the head and move
the head in the same statement.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apsw
import msgspec

from snackbase.errors import ApiError
from snackbase.times import now_iso
from snackbase.unit_of_work import read_snapshot

GENESIS_HASH = "0" * 64
MAX_REASON_CHARS = 1000
MAX_USER_AGENT_CHARS = 512
REASON_HEADER = "x-audit-reason"
REASON_BODY_KEY = "_reason"
# Record system fields: the entry itself carries the time, the actor and the record id.
DIFF_SKIP = frozenset(("id", "account_id", "created_at", "created_by", "updated_at", "updated_by"))

# Exactly the fields that are hashed, which are all columns of audit_log but `hash`. Every value is a
# string, an integer or null; `changes` and `extra` are JSON text, hashed as that text.
CANONICAL_FIELDS = (
    "account_id", "account_seq", "action", "actor_email", "actor_role", "actor_user_id", "auth_method",
    "changes", "collection", "extra", "ip", "occurred_at", "prev_hash", "reason", "record_id",
    "request_id", "seq", "user_agent",
)  # fmt: skip
COLUMNS = (*CANONICAL_FIELDS, "hash")

_sorted_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()


class Actor(msgspec.Struct, frozen=True):
    user_id: str | None
    email: str | None
    role: str | None
    method: str  # "token" | "password" | "anonymous" | "system" | "cli"


SYSTEM_ACTOR = Actor(None, None, None, "system")
CLI_ACTOR = Actor(None, None, None, "cli")
ANONYMOUS_ACTOR = Actor(None, None, None, "anonymous")


class RequestMeta(msgspec.Struct, frozen=True):
    request_id: str | None
    ip: str | None
    user_agent: str | None


class VerifyResult(msgspec.Struct, frozen=True):
    ok: bool
    entries_checked: int
    first_bad_seq: int | None = None
    account_id: str | None = None  # the account of the first broken entry
    problem: str | None = None  # what is wrong with it, for a human

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries_checked": self.entries_checked,
            "first_bad_seq": self.first_bad_seq,
            "account_id": self.account_id,
            "problem": self.problem,
        }


# --- canonical form and hash -------------------------------------------------------------------


def canonical_json(entry: Mapping[str, Any]) -> bytes:
    """The hashed bytes: a JSON object of exactly CANONICAL_FIELDS, keys sorted, no whitespace, UTF-8.

    Same bytes as Python's `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
    (tested), so an auditor needs nothing of ours to recompute a hash.
    """
    obj = {name: entry[name] for name in CANONICAL_FIELDS}
    for name in ("seq", "account_seq"):
        if type(obj[name]) is not int:  # a bool or a float would print differently in other languages
            raise TypeError(f"{name} must be an integer")
    return _sorted_encoder.encode(obj)


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(entry)).hexdigest()


def encode_json_text(value: Any) -> str | None:
    """JSON text for `changes`/`extra` as stored and hashed: sorted keys, so equal dicts give equal text."""
    return None if value is None else _sorted_encoder.encode(value).decode()


# --- building entries --------------------------------------------------------------------------


def append(
    conn: apsw.Connection,
    *,
    account_id: str,
    actor: Actor,
    action: str,
    collection: str | None = None,
    record_id: str | None = None,
    changes: dict[str, dict[str, Any]] | None = None,
    reason: str | None = None,
    meta: RequestMeta | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Appends one entry to the account's chain and returns its `seq`. Runs in the caller's transaction."""
    if not conn.in_transaction:
        raise RuntimeError("audit.append must run inside the caller's transaction (its unit of work)")
    head_pos, head_hash, last_seq = _lock_head(conn, account_id)
    meta = meta or RequestMeta(None, None, None)
    entry: dict[str, Any] = {
        "seq": last_seq + 1, "account_id": account_id, "account_seq": head_pos + 1,
        "occurred_at": now_iso(), "actor_user_id": actor.user_id, "actor_email": actor.email,
        "actor_role": actor.role, "auth_method": actor.method, "action": action, "collection": collection,
        "record_id": record_id, "changes": encode_json_text(changes), "reason": reason,
        "request_id": meta.request_id, "ip": meta.ip, "user_agent": meta.user_agent,
        "extra": encode_json_text(extra), "prev_hash": head_hash,
    }  # fmt: skip
    # `entry` holds exactly CANONICAL_FIELDS, integers where canonical_json demands them: its sorted
    # encoding is the canonical form (tested against entry_hash on stored rows), without the copy.
    entry["hash"] = hashlib.sha256(_sorted_encoder.encode(entry)).hexdigest()
    conn.execute(_INSERT_ENTRY, entry)
    return int(entry["seq"])


_INSERT_ENTRY = f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})"


def _lock_head(conn: apsw.Connection, account_id: str) -> tuple[int, str, int]:
    """(position, hash) of the account's chain head and the last global seq, under the write lock.

    A write statement first: SQLite grants the write lock before reading, so two processes appending
    at once are serialized here (the second waits on the busy timeout) and both read a current head.
    Inside BEGIN IMMEDIATE (every record write) the lock is already held and a plain read is current
    (1.3 µs instead of the upsert's 3.3 µs); only a new account's first entry needs the upsert then.
    """
    if not isinstance(conn, apsw.Connection):  # PostgreSQL (snackbase/backends/postgres.py)
        return _lock_head_postgres(conn, account_id)
    if conn.txn_state("main") == apsw.SQLITE_TXN_WRITE:
        head = conn.execute(_READ_HEAD, (account_id,)).fetchone()
        if head is not None:
            return int(head[0]), str(head[1]), int(head[2])
    row = conn.execute(_LOCK_HEAD, (account_id, GENESIS_HASH)).fetchone()
    assert row is not None  # an upsert with RETURNING always returns its row
    return int(row[0]), str(row[1]), int(row[2])


_READ_HEAD = """
SELECT account_seq, hash, (SELECT coalesce(max(seq), 0) FROM audit_log) FROM audit_heads WHERE account_id = ?
"""
_LOCK_HEAD = """
INSERT INTO audit_heads (account_id, account_seq, seq, hash) VALUES (?, 0, 0, ?)
ON CONFLICT (account_id) DO UPDATE SET account_id = excluded.account_id
RETURNING account_seq, hash, (SELECT coalesce(max(seq), 0) FROM audit_log)
"""


def _lock_head_postgres(conn: Any, account_id: str) -> tuple[int, str, int]:
    """The same on PostgreSQL, where writers on many nodes run at once and wait on row locks, not on one
    database lock: the upsert takes the account's head row lock until the write's transaction ends, so
    appends of one account are serialized (other accounts' are not). The global `seq` comes from the
    sequence audit_log_seq, taken in RETURNING, after the lock is held: within a chain it increases."""
    row = conn.execute(_LOCK_HEAD_POSTGRES, (account_id, GENESIS_HASH)).fetchone()
    assert row is not None
    return int(row[0]), str(row[1]), int(row[2])


# The PostgreSQL variant of _LOCK_HEAD (sql/postgresql/003_audit.sql): nextval is the next entry's seq.
_LOCK_HEAD_POSTGRES = """
INSERT INTO audit_heads (account_id, account_seq, seq, hash) VALUES (?, 0, 0, ?)
ON CONFLICT (account_id) DO UPDATE SET account_id = excluded.account_id
RETURNING account_seq, hash, nextval('audit_log_seq') - 1
"""


def decode_text(text: str | None) -> Any:
    return None if text is None else _decoder.decode(text)


def differs(a: Any, b: Any) -> bool:
    # 1 == True and 1 == 1.0 in Python, but a change from 1 to true is a change in the record.
    return a != b or type(a) is not type(b)


def diff(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    *,
    skip: Iterable[str] = DIFF_SKIP,
    pii: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """`{field: {"old": …, "new": …}}` for every field whose value differs (create: old is None;
    delete: new is None). `pii` maps field → mask kind; those fields carry `"mask"` in their change, so
    audit views keep masking them even after the collection's schema changes or is deleted."""
    old, new = old or {}, new or {}
    skipped = frozenset(skip)
    changes: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys([*old, *new]):
        if name in skipped:
            continue
        before, after = old.get(name), new.get(name)
        if differs(before, after):
            change = {"old": before, "new": after}
            if pii and name in pii:
                change["mask"] = pii[name]
            changes[name] = change
    return changes


# Unicode bidirectional overrides and isolates: they can make a reason display differently from what
# was stored (Trojan-Source style), which defeats the point of an audit record.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def reason_error(message: str) -> ApiError:
    return ApiError(400, "invalid_reason", message)


def validate_reason(reason: str | None) -> str | None:
    """The reason as stored: surrounding whitespace trimmed, empty → None; 400 `invalid_reason` when it
    is not text, longer than MAX_REASON_CHARS, or holds a control or bidi-override character."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise reason_error("The reason for the change must be a string.")
    reason = reason.strip()
    if len(reason) > MAX_REASON_CHARS:
        raise reason_error(f"The reason for the change is longer than {MAX_REASON_CHARS} characters.")
    if any(unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS for ch in reason):
        raise reason_error("The reason for the change must not contain control characters.")
    return reason or None


def require_reason(reason: str | None) -> str:
    """For collections with `audit.require_reason: true`: 400 `reason_required` without a reason."""
    if reason is None:
        raise ApiError(
            400,
            "reason_required",
            "This collection requires a reason for every change (X-Audit-Reason header or _reason).",
        )
    return reason


# --- verify ------------------------------------------------------------------------------------


class _Chain(msgspec.Struct):
    """The walk state of one account's chain; `broken` is (seq, problem) of its first bad entry."""

    account_id: str
    position: int = 0
    prev_hash: str = GENESIS_HASH
    last_seq: int = 0
    broken: tuple[int, str] | None = None

    def check(self, row: dict[str, Any]) -> None:
        if self.broken is None:
            problem = _entry_problem(self, row)
            if problem:
                self.broken = (int(row["seq"]), problem)
            else:
                self.position, self.prev_hash, self.last_seq = row["account_seq"], row["hash"], row["seq"]

    def finish(self, head: tuple[int, int, str] | None) -> None:
        if self.broken is not None or head == (self.position, self.last_seq, self.prev_hash):
            return
        if head is None:
            self.broken = (self.last_seq, "the account has entries but no chain head in audit_heads")
        elif head[0] > self.position:
            self.broken = (
                head[1],
                f"the chain ends at position {self.position} but its head is at "
                f"{head[0]}: entries at the end of the chain were deleted",
            )
        else:
            self.broken = (self.last_seq, "the chain head in audit_heads does not match the last entry")


def _entry_problem(chain: _Chain, row: dict[str, Any]) -> str | None:
    if row["account_seq"] != chain.position + 1:
        return (
            f"its chain position is {row['account_seq']}, expected {chain.position + 1}: "
            "an entry before it was deleted or one was inserted"
        )
    if row["prev_hash"] != chain.prev_hash:
        return "its prev_hash is not the hash of the previous entry: the entries before it were altered"
    try:
        recomputed = entry_hash(row)
    except (TypeError, KeyError, msgspec.EncodeError):
        return "it does not have the shape of an audit entry"
    if recomputed != row["hash"]:
        return "its contents do not match its hash: the entry was edited"
    if row["seq"] <= chain.last_seq:
        return "its seq is not after the previous entry's: entries were reordered"
    return None


def verify(conn: apsw.Connection, account_id: str | None = None) -> VerifyResult:
    """Re-walks every chain (or one account's) from its start: positions 1, 2, … without gaps, each
    `prev_hash` equal to the previous entry's `hash`, each `hash` recomputed from the entry, `seq`
    increasing, and the chain ending where `audit_heads` says. Reports the broken entry with the
    smallest `seq` (the first written), so fixing forward from it is possible."""
    with read_snapshot(conn):  # one read snapshot for the heads and the entries
        heads = _read_heads(conn, account_id)
        chains, checked = _walk(_entries(conn, account_id), heads)
    for account, head in heads.items():
        if account not in chains and head[0] > 0:
            chains[account] = _Chain(
                account, broken=(head[1], "its chain head exists but every entry is gone")
            )
    broken = [(c.broken[0], c.account_id, c.broken[1]) for c in chains.values() if c.broken]
    if not broken:
        return VerifyResult(True, checked)
    seq, account, problem = min(broken)
    return VerifyResult(False, checked, seq, account, problem)


def _walk(
    rows: Iterator[dict[str, Any]], heads: dict[str, tuple[int, int, str]]
) -> tuple[dict[str, _Chain], int]:
    chains: dict[str, _Chain] = {}
    chain: _Chain | None = None
    checked = 0
    for row in rows:
        checked += 1
        if chain is None or row["account_id"] != chain.account_id:
            if chain is not None:
                chain.finish(heads.get(chain.account_id))
            chain = chains[row["account_id"]] = _Chain(row["account_id"])
        chain.check(row)
    if chain is not None:
        chain.finish(heads.get(chain.account_id))
    return chains, checked


def _entries(conn: apsw.Connection, account_id: str | None) -> Iterator[dict[str, Any]]:
    """Every entry in chain order, streamed (verify may read millions of rows)."""
    where, params = ("WHERE account_id = ?", (account_id,)) if account_id else ("", ())
    cursor = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM audit_log {where} ORDER BY account_id, account_seq", params
    )
    for row in cursor:
        yield dict(zip(COLUMNS, row, strict=True))


def _read_heads(conn: apsw.Connection, account_id: str | None) -> dict[str, tuple[int, int, str]]:
    where, params = ("WHERE account_id = ?", (account_id,)) if account_id else ("", ())
    rows = conn.execute(f"SELECT account_id, account_seq, seq, hash FROM audit_heads {where}", params)
    return {row[0]: (row[1], row[2], row[3]) for row in rows}
