-- sfd schema 10: documents (invoices) a shop attaches to an order, sent through the outbox as
-- `upload_document` operations. The bytes live here, so a retry or a restart sends them again.

-- SQLite cannot alter a CHECK constraint; this is its documented way to widen one whose
-- change leaves the stored rows valid: edit the schema text, then reload it.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, '''acknowledge'', ''unacknowledge'')',
                          '''acknowledge'', ''unacknowledge'', ''upload_document'')')
 WHERE type = 'table' AND name = 'operations';
PRAGMA writable_schema = RESET;

CREATE TABLE documents (
    id            INTEGER PRIMARY KEY,
    order_id      INTEGER NOT NULL REFERENCES orders (id),
    operation_id  INTEGER NOT NULL UNIQUE REFERENCES operations (id),
    type          TEXT NOT NULL,
    file_name     TEXT NOT NULL,
    content_type  TEXT NOT NULL CHECK (content_type IN ('application/pdf', 'image/jpeg', 'image/png')),
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    -- NULL once erased (personal data retention): the row stays, as the ticket's trail.
    content       BLOB,
    created_at    TEXT NOT NULL,
    erased_at     TEXT
) STRICT;
CREATE INDEX documents_order_idx ON documents (order_id, sha256);
