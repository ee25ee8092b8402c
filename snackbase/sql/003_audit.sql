-- The audit trail (SPEC section 8): append-only entries, one SHA-256 hash chain per account.
-- No foreign keys on purpose: entries outlive the records, collections, users and accounts they name.
-- `changes` and `extra` hold JSON text; they enter the hash as that exact text (docs/audit.md).
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL,
    account_seq INTEGER NOT NULL,
    occurred_at TEXT NOT NULL,
    actor_user_id TEXT,
    actor_email TEXT,
    actor_role TEXT,
    auth_method TEXT NOT NULL,
    action TEXT NOT NULL,
    collection TEXT,
    record_id TEXT,
    changes TEXT,
    reason TEXT,
    request_id TEXT,
    ip TEXT,
    user_agent TEXT,
    extra TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
) STRICT;

-- One row per account: the end of its chain, so an append reads one row instead of scanning the log.
CREATE TABLE audit_heads (
    account_id TEXT PRIMARY KEY NOT NULL,
    account_seq INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- The chain order (and verify's scan); UNIQUE makes a second entry at the same position impossible.
CREATE UNIQUE INDEX audit_log_chain ON audit_log (account_id, account_seq);
-- A record's history (record ids are unique UUIDs, so the id alone finds it, for any caller). Every
-- index costs each audited write one more page in its commit (measured: ~8 µs of a ~70 µs create), so
-- the other filters (collection, user, action, time) walk the account's entries along audit_log_chain
-- newest first and stop at a page's worth; `seq` order is time order.
CREATE INDEX audit_log_record ON audit_log (record_id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: entries cannot be changed');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: entries cannot be deleted');
END;

-- A new entry must extend its account's chain exactly at the head: no fork, no gap, no stale prev_hash,
-- whoever writes it (a bug in a caller, or a second process that read an older head).
CREATE TRIGGER audit_log_extends_head BEFORE INSERT ON audit_log
WHEN NOT EXISTS (
    SELECT 1 FROM audit_heads
    WHERE account_id = NEW.account_id AND account_seq = NEW.account_seq - 1 AND hash = NEW.prev_hash
)
BEGIN
    SELECT RAISE(ABORT, 'audit entry does not extend its account''s chain head');
END;

CREATE TRIGGER audit_log_move_head AFTER INSERT ON audit_log
BEGIN
    UPDATE audit_heads SET account_seq = NEW.account_seq, seq = NEW.seq, hash = NEW.hash
    WHERE account_id = NEW.account_id;
END;

-- The head only moves forward, one entry at a time, onto an entry that exists.
CREATE TRIGGER audit_heads_forward_only BEFORE UPDATE ON audit_heads
WHEN NOT (NEW.account_id = OLD.account_id AND NEW.account_seq = OLD.account_seq AND NEW.seq = OLD.seq
          AND NEW.hash = OLD.hash)
     AND NOT (NEW.account_id = OLD.account_id AND NEW.account_seq = OLD.account_seq + 1 AND EXISTS (
         SELECT 1 FROM audit_log
         WHERE account_id = NEW.account_id AND account_seq = NEW.account_seq AND seq = NEW.seq
           AND hash = NEW.hash))
BEGIN
    SELECT RAISE(ABORT, 'audit_heads only moves forward onto an existing entry');
END;

-- A head is created only at the genesis of a new chain (the upsert in audit.append); this also stops
-- INSERT OR REPLACE, which deletes without firing delete triggers, from resetting a chain.
CREATE TRIGGER audit_heads_genesis_only AFTER INSERT ON audit_heads
WHEN NOT (NEW.account_seq = 0 AND NEW.seq = 0 AND NEW.hash = '0000000000000000000000000000000000000000000000000000000000000000'
          AND NOT EXISTS (SELECT 1 FROM audit_log WHERE account_id = NEW.account_id))
BEGIN
    SELECT RAISE(ABORT, 'audit_heads rows start at the genesis of a new chain');
END;

CREATE TRIGGER audit_heads_no_delete BEFORE DELETE ON audit_heads
BEGIN
    SELECT RAISE(ABORT, 'audit_heads rows cannot be deleted');
END;
