-- PostgreSQL version of ../006_signatures.sql: electronic signatures, never changed or deleted.
CREATE TABLE signatures (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_name TEXT NOT NULL,
    meaning TEXT NOT NULL,
    signed_at TEXT NOT NULL,
    record_hash TEXT NOT NULL,
    audit_seq BIGINT NOT NULL
);

CREATE INDEX signatures_record ON signatures (record_id);

CREATE FUNCTION signatures_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'signatures cannot be changed';
    END IF;
    RAISE EXCEPTION 'signatures cannot be deleted';
END $$;

CREATE TRIGGER signatures_no_update BEFORE UPDATE ON signatures
FOR EACH ROW EXECUTE FUNCTION signatures_immutable();

CREATE TRIGGER signatures_no_delete BEFORE DELETE ON signatures
FOR EACH ROW EXECUTE FUNCTION signatures_immutable();

CREATE TRIGGER signatures_no_truncate BEFORE TRUNCATE ON signatures
FOR EACH STATEMENT EXECUTE FUNCTION signatures_immutable();
