-- sfd schema 2 on PostgreSQL: 0002_api.sql with bytea documents, timestamptz times and
-- the shipments view reading the payload as jsonb.

ALTER TABLE orders ADD COLUMN document bytea;

DROP INDEX orders_to_process_idx;
CREATE INDEX orders_to_process_idx
    ON orders (store_id, status, acknowledged_at, fulfilled_by, updated_at, id);

ALTER TABLE channels ADD COLUMN require_tracking integer NOT NULL DEFAULT 1;

ALTER TABLE operations ADD COLUMN started_at timestamptz;

CREATE TABLE batches (
    id          text PRIMARY KEY,
    store_id    bigint NOT NULL REFERENCES stores (id),
    kind        text NOT NULL,
    source      text NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE batch_tickets (
    batch_id      text NOT NULL REFERENCES batches (id),
    position      integer NOT NULL,
    operation_id  bigint NOT NULL REFERENCES operations (id),
    PRIMARY KEY (batch_id, position)
);
CREATE INDEX batch_tickets_operation_idx ON batch_tickets (operation_id);
CREATE INDEX operations_store_idx ON operations (store_id, id);

CREATE VIEW shipments AS
SELECT p.id, p.order_id, o.reference AS order_reference, c.name AS channel, p.state,
       p.payload::jsonb ->> 'carrier' AS carrier,
       p.payload::jsonb ->> 'tracking_number' AS tracking_number,
       p.payload::jsonb ->> 'tracking_link' AS tracking_link,
       p.created_at, p.finished_at
FROM operations p
JOIN orders o ON o.id = p.order_id
JOIN channels c ON c.id = o.channel_id
WHERE p.kind = 'ship' AND p.state IN ('scheduled', 'running', 'succeed');
