-- Files (docs/files.md). Stored files live outside SQLite (local disk or S3-compatible storage), so
-- what the database must remember about them is what is still to be deleted, and how much each
-- account stores.
--
-- file_trash: storage keys to delete once `due_at` has passed. A removed file's key is written in the
-- same unit of work as the change that removes it (due at once) and deleted after COMMIT; an upload's
-- key is written (due in an hour) in its own small transaction BEFORE the file is moved into place, and
-- the record write that keeps the file deletes the row. So a crash anywhere leaves a row here, and the
-- sweeper (at start and periodically) deletes what no record holds.
CREATE TABLE file_trash (
    key TEXT PRIMARY KEY NOT NULL,
    due_at TEXT NOT NULL
) STRICT;

CREATE INDEX file_trash_due ON file_trash (due_at);

-- Bytes stored per account, kept up to date by every record change (for SNACKBASE_FILES_QUOTA_BYTES).
CREATE TABLE file_usage (
    account_id TEXT PRIMARY KEY NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0
) STRICT;
