-- PostgreSQL version of ../007_runtime_settings.sql.
CREATE TABLE runtime_settings (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT
);
