-- Custom SQL macros for rules: one read-only SELECT with positional parameters, run under an
-- authorizer (see snackbase/macros.py). Shared by all accounts, defined by superadmins.
CREATE TABLE macros (
    name TEXT PRIMARY KEY NOT NULL,
    sql TEXT NOT NULL,
    params INTEGER NOT NULL CHECK (params BETWEEN 0 AND 16),
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
