-- sfd schema 4: push mode. sfd creates the orders to process in a shop (WooCommerce), and
-- reads back which ones the shop completed or cancelled.
--
-- A push is recorded BEFORE the shop is called: a row still `pending` after its call means the
-- outcome is unknown (a crash, a timeout), so the shop is searched before any new create.
-- `settled_kind` records what the read-back turned the shop's order into (ship, cancel), so a
-- re-read never asks twice.

CREATE TABLE shops (
    name             TEXT PRIMARY KEY,
    store_id         INTEGER NOT NULL REFERENCES stores (id),
    connector        TEXT NOT NULL,
    cursor           TEXT,
    auth_state       TEXT NOT NULL DEFAULT 'unknown'
                     CHECK (auth_state IN ('unknown', 'ok', 'auth_failed')),
    last_sync_at     TEXT,
    last_success_at  TEXT,
    last_error       TEXT,
    last_error_at    TEXT,
    next_sync_at     TEXT,
    updated_at       TEXT NOT NULL
);

CREATE TABLE shop_pushes (
    id                 INTEGER PRIMARY KEY,
    shop               TEXT NOT NULL REFERENCES shops (name),
    order_id           INTEGER NOT NULL REFERENCES orders (id),
    state              TEXT NOT NULL CHECK (state IN ('pending', 'created', 'rejected')),
    shop_order_id      TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    started_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    completed_seen_at  TEXT,
    tracking_flagged_at TEXT,
    settled_kind       TEXT,
    settled_at         TEXT,
    UNIQUE (shop, order_id)
);

CREATE INDEX shop_pushes_shop_order_idx ON shop_pushes (shop, shop_order_id);
CREATE INDEX shop_pushes_waiting_idx ON shop_pushes (shop)
    WHERE completed_seen_at IS NOT NULL AND settled_at IS NULL;
