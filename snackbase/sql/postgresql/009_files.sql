-- PostgreSQL version of ../009_files.sql.
CREATE TABLE file_trash (
    key TEXT PRIMARY KEY NOT NULL,
    due_at TEXT NOT NULL
);

CREATE INDEX file_trash_due ON file_trash (due_at);

CREATE TABLE file_usage (
    account_id TEXT PRIMARY KEY NOT NULL,
    bytes BIGINT NOT NULL DEFAULT 0
);
