-- sfd schema 1: stores, channels, orders with their items, addresses and events,
-- the operations outbox and API tokens. Times are UTC ISO 8601 text of fixed width,
-- so they compare as text. Money is decimal text with the currency beside it.

CREATE TABLE stores (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;

CREATE TABLE channels (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    store_id         INTEGER NOT NULL REFERENCES stores (id),
    connector        TEXT NOT NULL,
    active           INTEGER NOT NULL DEFAULT 1,
    cursor           TEXT,
    auth_state       TEXT NOT NULL DEFAULT 'unknown'
                     CHECK (auth_state IN ('unknown', 'ok', 'auth_failed')),
    last_poll_at     TEXT,
    last_success_at  TEXT,
    last_error       TEXT,
    last_error_at    TEXT,
    next_poll_at     TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
) STRICT;

CREATE TABLE orders (
    id                      INTEGER PRIMARY KEY,
    channel_id              INTEGER NOT NULL REFERENCES channels (id),
    store_id                INTEGER NOT NULL REFERENCES stores (id),
    reference               TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN (
                                'created', 'waiting_store_acceptance', 'refused',
                                'waiting_shipment', 'shipped', 'partially_shipped',
                                'cancelled', 'refunded', 'partially_refunded')),
    store_reference         TEXT,
    acknowledged_at         TEXT,
    acknowledgment_status   TEXT CHECK (acknowledgment_status IN ('success', 'error')),
    acknowledgment_message  TEXT,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL,
    marketplace_updated_at  TEXT NOT NULL,
    imported_at             TEXT NOT NULL,
    latest_ship_date        TEXT,
    is_test                 INTEGER NOT NULL DEFAULT 0,
    fulfilled_by            TEXT NOT NULL DEFAULT 'store'
                            CHECK (fulfilled_by IN ('store', 'channel')),
    currency                TEXT NOT NULL,
    product_amount          TEXT NOT NULL,
    shipping_amount         TEXT NOT NULL,
    total_amount            TEXT NOT NULL,
    payment_method          TEXT NOT NULL DEFAULT '',
    shipping_method         TEXT NOT NULL DEFAULT '',
    carrier                 TEXT NOT NULL DEFAULT '',
    tracking_number         TEXT NOT NULL DEFAULT '',
    tracking_link           TEXT NOT NULL DEFAULT '',
    additional_fields       TEXT NOT NULL DEFAULT '{}',
    UNIQUE (channel_id, reference)
) STRICT;

-- The orders to process, in the order a shop pages through them.
CREATE INDEX orders_to_process_idx
    ON orders (store_id, status, acknowledged_at, updated_at, id);
CREATE INDEX orders_store_updated_idx ON orders (store_id, updated_at, id);
CREATE INDEX orders_ship_by_idx ON orders (latest_ship_date)
    WHERE status IN ('waiting_shipment', 'partially_shipped');

CREATE TABLE order_items (
    id                 INTEGER PRIMARY KEY,
    order_id           INTEGER NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position           INTEGER NOT NULL,
    reference          TEXT NOT NULL,
    channel_reference  TEXT NOT NULL,
    name               TEXT NOT NULL DEFAULT '',
    status             TEXT NOT NULL DEFAULT '',
    quantity           INTEGER NOT NULL CHECK (quantity >= 0),
    price              TEXT NOT NULL,
    commission         TEXT NOT NULL DEFAULT '0',
    tax_amount         TEXT NOT NULL DEFAULT '0',
    ecotax_amount      TEXT NOT NULL DEFAULT '0',
    image              TEXT NOT NULL DEFAULT '',
    additional_fields  TEXT NOT NULL DEFAULT '{}',
    UNIQUE (order_id, position)
) STRICT;

-- Personal data lives here and in order_payloads only, so a retention job can erase it
-- without touching the order's history.
CREATE TABLE order_addresses (
    order_id      INTEGER NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('billing', 'shipping')),
    first_name    TEXT NOT NULL DEFAULT '',
    last_name     TEXT NOT NULL DEFAULT '',
    company       TEXT NOT NULL DEFAULT '',
    street        TEXT NOT NULL DEFAULT '',
    street2       TEXT NOT NULL DEFAULT '',
    other         TEXT NOT NULL DEFAULT '',
    postal_code   TEXT NOT NULL DEFAULT '',
    city          TEXT NOT NULL DEFAULT '',
    province      TEXT NOT NULL DEFAULT '',
    country       TEXT NOT NULL DEFAULT '',
    phone         TEXT NOT NULL DEFAULT '',
    mobile_phone  TEXT NOT NULL DEFAULT '',
    email         TEXT NOT NULL DEFAULT '',
    relay_id      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (order_id, kind)
) STRICT;

CREATE TABLE order_payloads (
    order_id     INTEGER PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    payload      TEXT NOT NULL,
    received_at  TEXT NOT NULL
) STRICT;

CREATE TABLE order_events (
    id            INTEGER PRIMARY KEY,
    order_id      INTEGER NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    at            TEXT NOT NULL,
    source        TEXT NOT NULL
                  CHECK (source IN ('marketplace', 'api', 'cli', 'page', 'auto', 'shop')),
    kind          TEXT NOT NULL,
    from_status   TEXT,
    to_status     TEXT,
    message       TEXT NOT NULL DEFAULT '',
    operation_id  INTEGER REFERENCES operations (id)
) STRICT;
CREATE INDEX order_events_order_idx ON order_events (order_id, id);

-- The outbox. An operation is also its ticket: `state` uses the ticket vocabulary.
CREATE TABLE operations (
    id               INTEGER PRIMARY KEY,
    ticket_id        TEXT NOT NULL UNIQUE,
    batch_id         TEXT NOT NULL,
    store_id         INTEGER NOT NULL REFERENCES stores (id),
    channel_id       INTEGER REFERENCES channels (id),
    order_id         INTEGER REFERENCES orders (id),
    kind             TEXT NOT NULL CHECK (kind IN (
                         'accept', 'refuse', 'ship', 'cancel', 'refund', 'deliver',
                         'acknowledge', 'unacknowledge')),
    payload          TEXT NOT NULL DEFAULT '{}',
    source           TEXT NOT NULL
                     CHECK (source IN ('marketplace', 'api', 'cli', 'page', 'auto', 'shop')),
    state            TEXT NOT NULL DEFAULT 'scheduled'
                     CHECK (state IN ('scheduled', 'running', 'succeed', 'failed', 'canceled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    lease_until      TEXT,
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT,
    confirmed_at     TEXT
) STRICT;
CREATE INDEX operations_due_idx ON operations (state, next_attempt_at)
    WHERE state IN ('scheduled', 'running');
CREATE INDEX operations_batch_idx ON operations (store_id, batch_id);
CREATE INDEX operations_order_idx ON operations (order_id);

CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    store_id      INTEGER NOT NULL REFERENCES stores (id),
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    revoked_at    TEXT
) STRICT;
CREATE UNIQUE INDEX api_tokens_active_name_idx ON api_tokens (name) WHERE revoked_at IS NULL;

-- Views for people with sqlite3; the daemon runs its own queries with its own clock.

CREATE VIEW orders_to_process AS
SELECT o.id, o.store_id, c.name AS channel, o.reference, o.status, o.created_at,
       o.updated_at, o.latest_ship_date, o.total_amount, o.currency
FROM orders o JOIN channels c ON c.id = o.channel_id
WHERE o.status = 'waiting_shipment'
  AND o.acknowledged_at IS NULL
  AND o.fulfilled_by = 'store'
  AND o.updated_at >= strftime('%Y-%m-%dT%H:%M:%S', 'now', '-7 days');

CREATE VIEW late_orders AS
SELECT o.id, o.store_id, c.name AS channel, o.reference, o.status, o.latest_ship_date,
       CAST((julianday('now') - julianday(o.latest_ship_date)) * 24 AS INTEGER) AS hours_late
FROM orders o JOIN channels c ON c.id = o.channel_id
WHERE o.status IN ('waiting_shipment', 'partially_shipped')
  AND o.fulfilled_by = 'store'
  AND o.latest_ship_date IS NOT NULL
  AND o.latest_ship_date < strftime('%Y-%m-%dT%H:%M:%S', 'now');

CREATE VIEW pending_operations AS
SELECT p.id, p.ticket_id, p.batch_id, p.kind, p.state, p.source, c.name AS channel,
       o.reference AS order_reference, p.attempts, p.next_attempt_at, p.last_error,
       p.created_at
FROM operations p
LEFT JOIN channels c ON c.id = p.channel_id
LEFT JOIN orders o ON o.id = p.order_id
WHERE p.state IN ('scheduled', 'running');

CREATE VIEW channel_health AS
SELECT c.name, c.connector, c.store_id, c.active, c.auth_state, c.last_poll_at,
       c.last_success_at, c.last_error, c.last_error_at, c.next_poll_at,
       (SELECT count(*) FROM orders o WHERE o.channel_id = c.id) AS orders,
       (SELECT count(*) FROM operations p
         WHERE p.channel_id = c.id AND p.state IN ('scheduled', 'running')) AS pending_operations,
       (SELECT count(*) FROM operations p
         WHERE p.channel_id = c.id AND p.state = 'failed') AS failed_operations
FROM channels c;
