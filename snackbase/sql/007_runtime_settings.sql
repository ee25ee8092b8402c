-- Settings changed in the admin console (Settings screen, PATCH /settings): applied without a restart.
-- A SNACKBASE_* environment variable (or .env line) for the same setting still wins. `value` is JSON.
CREATE TABLE runtime_settings (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT
) STRICT;
