"""A small Salesforce client: OAuth 2.0 web server flow (``oauth``), the REST API (``client``) and SOQL
building (``soql``). Plain functions and dataclasses over ``requests``: no Django, no ORM; settings are
passed in as arguments."""

API_VERSION = "v62.0"
