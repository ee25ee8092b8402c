-- PostgreSQL version of ../001_accounts.sql (kept in step by tests/test_postgres.py: same tables, same
-- columns). Timestamps stay ISO-8601 text and JSON stays text, exactly as on SQLite, so the Python code
-- reading and writing them is the same on both backends; integers are BIGINT (SQLite's are 64-bit).
CREATE FUNCTION sb_now() RETURNS text LANGUAGE sql STABLE
AS $$ SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

CREATE TABLE accounts (
    id TEXT PRIMARY KEY NOT NULL CHECK (id ~ '^[A-Z][A-Z][0-9][0-9][0-9][0-9]$'),
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

INSERT INTO accounts (id, slug, name, created_at, updated_at)
VALUES ('SY0000', 'system', 'System', sb_now(), sb_now());
