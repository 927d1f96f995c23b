-- sfd schema 12: leases and the order page's sessions, shared by every `sfd run` on a database.
-- A lease gives one instance a channel's poller or a shop's push loop (and the delivery of
-- that channel's operations) until `expires_at`; its holder renews it. On SQLite the one
-- instance holds them all.
CREATE TABLE leases (
    name         TEXT PRIMARY KEY,   -- 'channel:<id>' or 'shop:<name>'
    holder       TEXT NOT NULL,      -- the instance id (instances.id)
    acquired_at  TEXT NOT NULL,
    expires_at   TEXT NOT NULL
) STRICT;
CREATE INDEX leases_holder_idx ON leases (holder);

-- A signed-in person on the order page. Only the SHA-256 of the cookie's session id is
-- stored, like API tokens, so the table cannot be used to sign in.
CREATE TABLE page_sessions (
    id_hash     TEXT PRIMARY KEY,
    token_id    INTEGER NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    token_name  TEXT NOT NULL,
    store_id    INTEGER NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
) STRICT;
CREATE INDEX page_sessions_expires_idx ON page_sessions (expires_at);
