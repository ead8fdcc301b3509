"""What one HTTP request to Clazar is, before it is sent: built by ``flows.payloads.build_requests`` (for the
Sample Payload panel, Send Test Data and the workers alike) and sent by ``clazar_dest.clazar.transport``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestSpec:
    """One request. ``headers`` are the configured extra headers only: Authorization, Content-Type and
    Idempotency-Key are added by the transport. ``seqs`` are the record seqs it covers, in order."""

    method: str
    url: str
    body: bytes | None
    seqs: tuple[int, ...]
    headers: tuple[tuple[str, str], ...] = ()
    target_id: str = ""  # the object it changes (the ID parameter's value), for ordering updates
    endpoint: str = ""  # the catalog key, or "" for Advanced


@dataclass(frozen=True)
class RecordError:
    """A record that cannot become a request (e.g. a URL macro attribute is missing). The others go on."""

    seq: int
    message: str
    fields: tuple[str, ...] = field(default=())
