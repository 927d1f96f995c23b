-- sfd schema 11: the `sfd run` instances that used this database. On SQLite one at a time
-- (the run lock); on PostgreSQL several at once, each registered when it starts.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    seen_at     TEXT NOT NULL,
    stopped_at  TEXT
) STRICT;
