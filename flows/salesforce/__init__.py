"""Salesforce inside the app: the connection (OAuth, tokens, org switch), Salesforce Nexsets and pulls.

The wire protocol lives in ``clazar_dest.salesforce`` (no ORM); this package stores what it returns.
"""
