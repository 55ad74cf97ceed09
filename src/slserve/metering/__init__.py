"""The ledger of billed requests and the usage reports drawn from it."""
