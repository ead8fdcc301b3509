"""The delivery engine (DESIGN.md section 6). The database is the queue of record; Celery messages only
wake it up. See the modules for each step:

- ``planner``: records past the cursor -> Delivery rows, in chunks, cursor advanced in the same transaction.
- ``claims``: due deliveries claimed with SKIP LOCKED (PostgreSQL) or conditional updates (SQLite); the
  oldest open delivery per (destination, target) only.
- ``send``: attempt committed before the socket opens, classify, record, 429 pause, circuit breaker.
- ``reconcile``: unknown creates and publishes settled by a lookup, or handed to a person.
- ``engine``: the deliver loop with its thread pool and the shared rate budget; the breaker's probe.
- ``sweeper``: expired leases, due retries, wake-ups.

Public API (also used by the dashboard's actions):

- ``process_due(destination_id, *, limit=None, lease_seconds=None, threads=None, max_seconds=None)``
- ``run(destination_id)``: what the ``flows.deliver`` task does.
- ``plan(destination_id)``, ``claim(destination_id, limit, lease_seconds)``, ``sweep()``.
- ``settled(delivery_id)``: call after moving a delivery to a final state by hand (e.g. an operator
  recording "it was created: id X"), so its response reaches the response Nexset.
"""

from __future__ import annotations

from flows.delivery.claims import claim
from flows.delivery.engine import due_work, process_due, run
from flows.delivery.planner import plan
from flows.delivery.send import finished as settled
from flows.delivery.sweeper import sweep

__all__ = ["claim", "due_work", "plan", "process_due", "run", "settled", "sweep"]
