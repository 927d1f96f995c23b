-- sfd schema 3: the operations worker. After a marketplace took an operation, sfd asks
-- it again at `confirm_at` until the order shows the result, then records `confirmed_at`.

ALTER TABLE operations ADD COLUMN confirm_at TEXT;
ALTER TABLE operations ADD COLUMN delivered_at TEXT;

CREATE INDEX operations_confirm_idx ON operations (confirm_at)
    WHERE state = 'succeed' AND confirmed_at IS NULL;
