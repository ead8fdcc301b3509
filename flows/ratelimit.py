"""The request budget of each credential, shared by every worker thread and process (DESIGN.md 6.3).

GCRA (the "generic cell rate algorithm", a token bucket kept as one number): a credential allowed ``L``
requests a minute gets one request every ``T = 60 / (L x DELIVERY_RATE_USE_PERCENT %)`` seconds, with a
burst of about 1% of a minute. The state is the theoretical arrival time ``tat`` of the next request:

- **Redis** (when ``REDIS_URL`` is set): one key per credential, changed by a Lua script on Redis' own
  clock, so workers on different machines agree without trusting each other's clocks.
- **The database** otherwise: one ``RateBudget`` row per credential, changed under its row lock
  (PostgreSQL) or the database write lock (SQLite, whose transactions here are IMMEDIATE).

Why less than 100%: Clazar counts requests when they *arrive* in a sliding minute, we count them when they
are *granted*; network jitter can move a request from one minute into the next. At 97% a 600/min
credential sends 582 + 5 a minute, leaving room for about a second of jitter; nothing in the engine
depends on the exact figure, which is a setting.

A 429 from Clazar still happens if something else spends the same credential; ``hold`` then stops the
whole credential until Retry-After (the engine also sets ``Credential.paused_until``, which the dashboard
shows). Losing the Redis key (a flush, a restart) only forgets the debt: the next minute starts fresh.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from flows.models import Credential, RateBudget

KEY_PREFIX = "clazar-dest:budget:"

# KEYS[1]: the credential's key. ARGV: interval T, tolerance tau, op ("take" | "refund" | "hold"),
# n (requests to take or give back; seconds to hold). Returns {granted, wait-as-text}.
_LUA = """
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local op = ARGV[3]
local n = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tat = tonumber(redis.call('GET', key) or '0')
if tat < now then tat = now end
local granted = 0
local wait = 0
if op == 'take' then
  local room = math.floor((now + tau - tat) / interval + 1e-9) + 1
  if room <= 0 then
    return {0, string.format('%.6f', tat - tau - now)}
  end
  granted = math.min(n, room)
  tat = tat + granted * interval
elseif op == 'refund' then
  tat = math.max(now, tat - n * interval)
elseif op == 'hold' then
  tat = math.max(tat, now + n)
end
redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
return {granted, string.format('%.6f', wait)}
"""


@dataclass(frozen=True)
class Grant:
    """``count`` requests may go now; with 0, ``wait`` says how many seconds until one may."""

    count: int
    wait: float = 0.0


def pace(per_minute: int, use_percent: int | None = None) -> tuple[float, float]:
    """(interval between requests in seconds, burst tolerance in seconds) for a rate in requests/minute."""
    use = per_minute * (use_percent or settings.DELIVERY_RATE_USE_PERCENT) / 100
    interval = 60.0 / max(use, 1e-6)
    burst = max(1, int(use / 100))
    return interval, (burst - 1) * interval


def step(tat: float, now: float, interval: float, tau: float, want: int) -> tuple[float, int, float]:
    """One GCRA decision: (new tat, granted, wait). Pure; the Lua script is the same arithmetic."""
    tat = max(tat, now)
    room = math.floor((now + tau - tat) / interval + 1e-9) + 1
    if room <= 0:
        return tat, 0, tat - tau - now
    granted = min(want, room)
    return tat + granted * interval, granted, 0.0


def take(credential: Credential, want: int) -> Grant:
    """Take up to ``want`` requests from the credential's budget (at least one is granted, or a wait)."""
    if want <= 0:
        return Grant(0, 0.0)
    interval, tau = pace(credential.rate_limit)
    if settings.REDIS_URL:
        granted, wait = _script()(keys=[_key(credential)], args=[interval, tau, "take", want])
        return Grant(int(granted), float(wait))
    return _db(credential.pk, lambda tat, now: step(tat, now, interval, tau, want))


def wait_for(credential: Credential, timeout: float) -> bool:
    """Block until one request may go (True), or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        grant = take(credential, 1)
        if grant.count:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(grant.wait, left, 1.0))


def refund(credential: Credential, count: int) -> None:
    """Give back requests that were taken but not sent (nothing was due after all)."""
    if count <= 0:
        return
    interval, tau = pace(credential.rate_limit)
    if settings.REDIS_URL:
        _script()(keys=[_key(credential)], args=[interval, tau, "refund", count])
        return
    _db(credential.pk, lambda tat, now: (max(now, tat - count * interval), 0, 0.0))


def hold(credential: Credential, seconds: float) -> None:
    """Nothing more for this credential until ``seconds`` from now (after a 429 with Retry-After)."""
    interval, tau = pace(credential.rate_limit)
    if settings.REDIS_URL:
        _script()(keys=[_key(credential)], args=[interval, tau, "hold", seconds])
        return
    _db(credential.pk, lambda tat, now: (max(tat, now + seconds), 0, 0.0))


# -- backends -------------------------------------------------------------------------------------------


def _key(credential: Credential) -> str:
    return f"{KEY_PREFIX}{credential.uuid}"


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _script() -> Any:
    """The registered Lua script on this process's Redis client (redis-py reconnects after a fork)."""
    url = settings.REDIS_URL
    with _clients_lock:
        script = _clients.get(url)
        if script is None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            script = _clients[url] = client.register_script(_LUA)
        return script


def _db(credential_id: int, change: Any) -> Grant:
    with transaction.atomic():
        row = RateBudget.objects.select_for_update().filter(pk=credential_id).first()
        if row is None:
            try:
                with transaction.atomic():
                    RateBudget.objects.create(credential_id=credential_id)
            except IntegrityError:
                pass  # another worker created it first
            row = RateBudget.objects.select_for_update().get(pk=credential_id)
        tat, granted, wait = change(row.tat, time.time())
        if tat != row.tat:
            RateBudget.objects.filter(pk=credential_id).update(tat=tat)
    return Grant(granted, wait)
