-- PostgreSQL version of ../005_macros.sql (running macros on PostgreSQL needs its own fence: a
-- read-only transaction under a role without write rights; not yet ported, see docs/scaling.md).
CREATE TABLE macros (
    name TEXT PRIMARY KEY NOT NULL,
    sql TEXT NOT NULL,
    params BIGINT NOT NULL CHECK (params BETWEEN 0 AND 16),
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
