-- sfd schema 12 on PostgreSQL: leases and the order page's sessions (see 0012_leases.sql).
CREATE TABLE leases (
    name         text PRIMARY KEY,
    holder       text NOT NULL,
    acquired_at  timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX leases_holder_idx ON leases (holder);

CREATE TABLE page_sessions (
    id_hash     text PRIMARY KEY,
    token_id    bigint NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    token_name  text NOT NULL,
    store_id    bigint NOT NULL,
    csrf        text NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX page_sessions_expires_idx ON page_sessions (expires_at);
