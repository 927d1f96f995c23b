-- sfd schema 13: what a delivered operation sent (a shipment's carrier code and where it came
-- from, its tracking numbers), shown as the ticket's result.
ALTER TABLE operations ADD COLUMN result TEXT;
