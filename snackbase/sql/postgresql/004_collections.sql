-- PostgreSQL version of ../004_collections.sql. Each collection's records live in their own table
-- "c_<name>" (its DDL per dialect: snackbase/ddl.py, not yet ported to PostgreSQL, see docs/scaling.md).
CREATE TABLE collections (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    fields TEXT NOT NULL,
    rules TEXT NOT NULL,
    field_access TEXT NOT NULL,
    audit TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE collections_version (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);

INSERT INTO collections_version (id, version) VALUES (1, 0);
