-- sfd schema 3 on PostgreSQL: 0003_worker.sql with timestamptz times.

ALTER TABLE operations ADD COLUMN confirm_at timestamptz;
ALTER TABLE operations ADD COLUMN delivered_at timestamptz;

CREATE INDEX operations_confirm_idx ON operations (confirm_at)
    WHERE state = 'succeed' AND confirmed_at IS NULL;
