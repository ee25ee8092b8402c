-- Accounts (tenants) and the system account that holds the superadmins.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY NOT NULL CHECK (id GLOB '[A-Z][A-Z][0-9][0-9][0-9][0-9]'),
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

INSERT INTO accounts (id, slug, name, created_at, updated_at)
VALUES ('SY0000', 'system', 'System', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
