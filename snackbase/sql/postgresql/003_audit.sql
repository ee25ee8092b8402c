-- PostgreSQL version of ../003_audit.sql: append-only entries, one SHA-256 hash chain per account.
--
-- Differences from SQLite, and why:
-- * `seq` comes from the sequence audit_log_seq (audit.append takes nextval under the account's head
--   lock): writers on many nodes never compute the same global number. Seq is increasing within each
--   account's chain (the head row lock is held until commit); across accounts it may have gaps.
-- * The chain head of an account is locked with SELECT … FOR UPDATE inside the write's transaction, so
--   writers of one account on any node are serialized; writers of different accounts are not.
-- * The triggers are PL/pgSQL functions with the same rules and the same messages.
CREATE SEQUENCE audit_log_seq AS BIGINT;

CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL,
    account_seq BIGINT NOT NULL,
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
);

CREATE TABLE audit_heads (
    account_id TEXT PRIMARY KEY NOT NULL,
    account_seq BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

CREATE UNIQUE INDEX audit_log_chain ON audit_log (account_id, account_seq);
CREATE INDEX audit_log_record ON audit_log (record_id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'audit_log is append-only: entries cannot be changed';
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: entries cannot be deleted';
END $$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- TRUNCATE bypasses row triggers on PostgreSQL (SQLite has no TRUNCATE): refuse it as well.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

CREATE FUNCTION audit_log_extends_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM audit_heads
        WHERE account_id = NEW.account_id AND account_seq = NEW.account_seq - 1 AND hash = NEW.prev_hash
    ) THEN
        RAISE EXCEPTION 'audit entry does not extend its account''s chain head';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER audit_log_extends_head BEFORE INSERT ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_extends_head();

CREATE FUNCTION audit_log_move_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_heads SET account_seq = NEW.account_seq, seq = NEW.seq, hash = NEW.hash
    WHERE account_id = NEW.account_id;
    RETURN NULL;
END $$;

CREATE TRIGGER audit_log_move_head AFTER INSERT ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_move_head();

CREATE FUNCTION audit_heads_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (NEW.account_id = OLD.account_id AND NEW.account_seq = OLD.account_seq AND NEW.seq = OLD.seq
            AND NEW.hash = OLD.hash)
       AND NOT (NEW.account_id = OLD.account_id AND NEW.account_seq = OLD.account_seq + 1 AND EXISTS (
           SELECT 1 FROM audit_log
           WHERE account_id = NEW.account_id AND account_seq = NEW.account_seq AND seq = NEW.seq
             AND hash = NEW.hash)) THEN
        RAISE EXCEPTION 'audit_heads only moves forward onto an existing entry';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER audit_heads_forward_only BEFORE UPDATE ON audit_heads
FOR EACH ROW EXECUTE FUNCTION audit_heads_forward_only();

CREATE FUNCTION audit_heads_genesis_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (NEW.account_seq = 0 AND NEW.seq = 0
            AND NEW.hash = '0000000000000000000000000000000000000000000000000000000000000000'
            AND NOT EXISTS (SELECT 1 FROM audit_log WHERE account_id = NEW.account_id)) THEN
        RAISE EXCEPTION 'audit_heads rows start at the genesis of a new chain';
    END IF;
    RETURN NEW;
END $$;

-- AFTER, as on SQLite: a BEFORE trigger would also fire for the upsert's conflicting (not inserted) row.
CREATE TRIGGER audit_heads_genesis_only AFTER INSERT ON audit_heads
FOR EACH ROW EXECUTE FUNCTION audit_heads_genesis_only();

CREATE FUNCTION audit_heads_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_heads rows cannot be deleted';
END $$;

CREATE TRIGGER audit_heads_no_delete BEFORE DELETE ON audit_heads
FOR EACH ROW EXECUTE FUNCTION audit_heads_no_delete();

CREATE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON audit_heads
FOR EACH STATEMENT EXECUTE FUNCTION audit_heads_no_delete();
