-- Realtime: the server processes that listen for events. A write inserts its `realtime_events` row
-- only while some row here is current (`until` in the future, epoch seconds), checked inside the
-- write's own transaction: SQLite's single writer orders it against every registration, so a process
-- that committed its row before acknowledging a subscription gets every later event, and without any
-- listener a write costs nothing for realtime. A listening process keeps `until` a few minutes ahead
-- (the resume window) and leaves it there when its last client goes, so a reconnecting client still
-- finds what it missed. Expired rows are removed by the next registration.
CREATE TABLE realtime_listeners (
    process TEXT PRIMARY KEY,
    until REAL NOT NULL
) STRICT;
