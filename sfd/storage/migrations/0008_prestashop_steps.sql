-- A shop whose create takes several calls (PrestaShop: customer, addresses, cart, prices,
-- order, state) records each step's id here as it is made, as a JSON object, so that a
-- crash in the middle resumes the chain rather than starting it again.
ALTER TABLE shop_pushes ADD COLUMN steps TEXT;
