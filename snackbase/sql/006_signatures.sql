-- Electronic signatures (21 CFR 11.50, 11.70, 11.200): who signed which exact version of a record,
-- when, and what the signature means. `record_hash` binds the signature to the signed version; the
-- signature's own audit entry (same transaction) puts it into the account's hash chain.
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
    audit_seq INTEGER NOT NULL
) STRICT;

CREATE INDEX signatures_record ON signatures (record_id);

CREATE TRIGGER signatures_no_update BEFORE UPDATE ON signatures
BEGIN
    SELECT RAISE(ABORT, 'signatures cannot be changed');
END;

CREATE TRIGGER signatures_no_delete BEFORE DELETE ON signatures
BEGIN
    SELECT RAISE(ABORT, 'signatures cannot be deleted');
END;
