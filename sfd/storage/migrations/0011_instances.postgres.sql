-- sfd schema 11 on PostgreSQL: the `sfd run` instances sharing this database.
CREATE TABLE instances (
    id          text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL,
    stopped_at  timestamptz
);
