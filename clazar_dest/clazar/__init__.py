"""Clazar API: endpoint catalog, auth/token cache and client (no ORM)."""
