-- The API documents stored before this version carry `itemsReferencesAliases: null`; they are
-- rendered again when read (and stored again at the order's next change), now with `{}`.
UPDATE orders SET document = NULL WHERE document IS NOT NULL;
