-- PostgreSQL version of ../012_realtime_listeners.sql (realtime is not yet ported to PostgreSQL, see
-- docs/scaling.md; the table keeps the two schemas in step).
CREATE TABLE realtime_listeners (
    process TEXT PRIMARY KEY,
    until DOUBLE PRECISION NOT NULL
);
