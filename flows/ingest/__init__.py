"""Pure parsing and schema inference for incoming records (no ORM, no network)."""
