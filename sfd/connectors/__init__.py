"""The only code that speaks a marketplace's or a shop's wire format. No SQL, no loops."""
