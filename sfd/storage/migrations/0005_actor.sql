-- Who did it: the token's name (API, /ws, the page), the system user (CLI), the shop (push).
ALTER TABLE order_events ADD COLUMN actor TEXT;
