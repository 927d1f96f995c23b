-- sfd schema 6: the marketplace's status is the truth.
--
-- An accepted order may still wait for the buyer's payment (Mirakl WAITING_DEBIT,
-- WAITING_DEBIT_PAYMENT). It keeps Shoppingfeed's status, waiting_shipment, so shop modules
-- meet no status they do not know, and this flag keeps it out of the offer until the
-- marketplace releases it.
ALTER TABLE orders ADD COLUMN payment_pending INTEGER NOT NULL DEFAULT 0;

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
  AND o.updated_at >= strftime('%Y-%m-%dT%H:%M:%S', 'now', '-7 days');

-- Orders an older sfd left behind. It refused a marketplace status that skipped a step
-- (an update_refused event, with no status change after it), kept the refused version's
-- time as the order's, and moved the cursor on. The next poll repairs them: each channel's
-- cursor goes back to 5 minutes before its earliest such version, and those orders forget
-- that version's time, so the marketplace's current one is read and applied.
UPDATE channels SET cursor = (
    SELECT strftime('%Y-%m-%dT%H:%M:%S', min(o.marketplace_updated_at), '-5 minutes')
           || '.000000+00:00'
    FROM orders o
    WHERE o.channel_id = channels.id
      AND EXISTS (
        SELECT 1 FROM order_events e
        WHERE e.order_id = o.id AND e.kind = 'update_refused'
          AND NOT EXISTS (
            SELECT 1 FROM order_events s
            WHERE s.order_id = o.id AND s.kind = 'status' AND s.id > e.id)))
WHERE cursor IS NOT NULL
  AND EXISTS (
    SELECT 1 FROM orders o JOIN order_events e ON e.order_id = o.id
    WHERE o.channel_id = channels.id AND e.kind = 'update_refused'
      AND NOT EXISTS (
        SELECT 1 FROM order_events s
        WHERE s.order_id = o.id AND s.kind = 'status' AND s.id > e.id)
      AND strftime('%Y-%m-%dT%H:%M:%S', o.marketplace_updated_at, '-5 minutes')
          || '.000000+00:00' < channels.cursor);

-- A second before the order's creation: older than any version the marketplace can serve.
UPDATE orders
SET marketplace_updated_at =
    strftime('%Y-%m-%dT%H:%M:%S', created_at, '-1 seconds') || '.000000+00:00'
WHERE EXISTS (
    SELECT 1 FROM order_events e
    WHERE e.order_id = orders.id AND e.kind = 'update_refused'
      AND NOT EXISTS (
        SELECT 1 FROM order_events s
        WHERE s.order_id = orders.id AND s.kind = 'status' AND s.id > e.id));
