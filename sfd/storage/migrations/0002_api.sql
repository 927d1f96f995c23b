-- sfd schema 2: what the shop webservice needs. Each order keeps its API document,
-- rendered whenever the order changes, so reads never build JSON. Batches group the
-- tickets one operation request produced; a repeated request may point at an older ticket.

ALTER TABLE orders ADD COLUMN document BLOB;

-- The orders to process, answered from the index alone: a shop pages through them often.
DROP INDEX orders_to_process_idx;
CREATE INDEX orders_to_process_idx
    ON orders (store_id, status, acknowledged_at, fulfilled_by, updated_at, id);

ALTER TABLE channels ADD COLUMN require_tracking INTEGER NOT NULL DEFAULT 1;

ALTER TABLE operations ADD COLUMN started_at TEXT;

CREATE TABLE batches (
    id          TEXT PRIMARY KEY,
    store_id    INTEGER NOT NULL REFERENCES stores (id),
    kind        TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  TEXT NOT NULL
) STRICT;

CREATE TABLE batch_tickets (
    batch_id      TEXT NOT NULL REFERENCES batches (id),
    position      INTEGER NOT NULL,
    operation_id  INTEGER NOT NULL REFERENCES operations (id),
    PRIMARY KEY (batch_id, position)
) STRICT;
CREATE INDEX batch_tickets_operation_idx ON batch_tickets (operation_id);
CREATE INDEX operations_store_idx ON operations (store_id, id);

-- A shipment is a ship operation that has not failed: pending, or confirmed.
CREATE VIEW shipments AS
SELECT p.id, p.order_id, o.reference AS order_reference, c.name AS channel, p.state,
       json_extract(p.payload, '$.carrier') AS carrier,
       json_extract(p.payload, '$.tracking_number') AS tracking_number,
       json_extract(p.payload, '$.tracking_link') AS tracking_link,
       p.created_at, p.finished_at
FROM operations p
JOIN orders o ON o.id = p.order_id
JOIN channels c ON c.id = o.channel_id
WHERE p.kind = 'ship' AND p.state IN ('scheduled', 'running', 'succeed');
