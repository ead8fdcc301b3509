"""Function views, one module per area; each view states its role with ``@role_required``."""
