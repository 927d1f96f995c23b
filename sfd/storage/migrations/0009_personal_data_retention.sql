-- sfd schema 9: personal data retention. Once an order has been closed for
-- `[daemon] pii_retention`, its buyer's names, companies, street lines, phones and emails are
-- erased (addresses, raw payload, API document); this records when. An order written again
-- after that time (a marketplace update) is looked at again by the next erasure.
-- How long an order has been closed is read from its status events (order_events.at).
ALTER TABLE orders ADD COLUMN personal_data_erased_at TEXT;
