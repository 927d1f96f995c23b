-- sfd schema 9 on PostgreSQL: when an order's personal data was erased (see the SQLite file).
ALTER TABLE orders ADD COLUMN personal_data_erased_at timestamptz;
