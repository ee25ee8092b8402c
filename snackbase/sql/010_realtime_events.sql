-- Realtime: every committed record change, written in the same unit of work as the change. Each
-- server process (serve --workers N) reads the rows after its own cursor and fans them out to its
-- subscribers; the sequence (`id`) is the event id clients resume from. Only the last few thousand
-- rows are kept (the resume window): the writer prunes older ones as it goes.
-- `record` is the record as committed (for a delete: as it was), unmasked JSON: it never leaves the
-- server except through the presenter, per subscriber.
CREATE TABLE realtime_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    action TEXT NOT NULL,
    account_id TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    record TEXT NOT NULL
) STRICT;
