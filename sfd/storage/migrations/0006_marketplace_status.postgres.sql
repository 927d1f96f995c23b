-- sfd schema 6 on PostgreSQL: the payment_pending flag and the view that honours it. The
-- repair of 0006_marketplace_status.sql concerns orders an older sfd left on SQLite; a
-- PostgreSQL database is filled by this version or by `sfd db copy` of a repaired file.
ALTER TABLE orders ADD COLUMN payment_pending integer NOT NULL DEFAULT 0;

DROP INDEX orders_to_process_idx;
CREATE INDEX orders_to_process_idx
    ON orders (store_id, status, acknowledged_at, fulfilled_by, payment_pending, updated_at, id);

DROP VIEW orders_to_process;
CREATE VIEW orders_to_process AS
SELECT o.id, o.store_id, c.name AS channel, o.reference, o.status, o.created_at,
       o.updated_at, o.latest_ship_date, o.total_amount, o.currency
FROM orders o JOIN channels c ON c.id = o.channel_id
WHERE o.status = 'waiting_shipment'
  AND o.acknowledged_at IS NULL
  AND o.fulfilled_by = 'store'
  AND o.payment_pending = 0
  AND o.updated_at >= now() - interval '7 days';
