-- Collection definitions. Each collection's records live in their own table "c_<name>", created and
-- altered in the same transaction as its row here (and its audit entry).
CREATE TABLE collections (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    fields TEXT NOT NULL,        -- JSON list of field definitions
    rules TEXT NOT NULL,         -- JSON {list, view, create, update, delete}: null | "" | expression
    field_access TEXT NOT NULL,  -- JSON {list, view, create, update}: field names or ["*"]
    audit TEXT NOT NULL,         -- JSON {require_reason}
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

-- One counter bumped by every collection change, so each process (and each cached compiled
-- validator or rule) notices a definition changed by another process with one cheap read.
CREATE TABLE collections_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;

INSERT INTO collections_version (id, version) VALUES (1, 0);
