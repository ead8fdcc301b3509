"""Write-back: after a destination fed by a Salesforce Nexset creates an object in Clazar, write the new
object's id into a text field of each source Salesforce record, as one person's own Salesforce login
(flows/salesforce/userlink.py). The setting is ``SalesforceSource.writeback`` (field, app user).

- ``schedule`` is called by ``responses.write`` once a succeeded delivery's response record is stored; it
  enqueues ``flows.salesforce_writeback`` after commit when the Nexset wants a write-back.
- ``run`` re-reads the delivery and PATCHes ``<object>/<Id> {field: created id}`` for each record the
  delivery covered (``Record.source_ref`` is the Salesforce Id). Writing the same value again is harmless,
  so a repeated task does no damage.
- Every outcome is an AuditEvent ``salesforce.writeback`` on the Nexset naming the Salesforce user, the
  record Id, the field and "ok" or Salesforce's error, and a log line. A missing link, a refused token or a
  403 is recorded and does not raise. Only "Salesforce unreachable" is tried again, a few times
  (``again`` lists those records for the task).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from clazar_dest.clazar import endpoints
from clazar_dest.salesforce.client import (
    SalesforceClient,
    SalesforceError,
    SalesforceUnavailable,
    SessionExpired,
)
from clazar_dest.salesforce.oauth import OAuthError
from flows import audit
from flows.config import DestinationConfig
from flows.models import AuditEvent, Delivery, Nexset, Record
from flows.salesforce import connection, describe, userlink
from flows.salesforce.source import SalesforceSource, Writeback

log = logging.getLogger(__name__)

ACTION = "salesforce.writeback"
ATTEMPTS = 4  # for records Salesforce could not be reached for
RETRY_SECONDS = 60  # times the attempt number
TEXT_TYPES = ("string", "textarea")
SHOWN_RESULTS = 25
_RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")


class ChoiceInvalid(ValueError):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class Result:
    """What one run did: record Id -> "ok" | "error" | "skipped" | "unavailable"; ``again`` are the Ids to
    try once more (Salesforce unreachable, attempts left)."""

    outcomes: dict[str, str] = field(default_factory=dict)
    again: list[str] = field(default_factory=list)


# -- the trigger ------------------------------------------------------------------------------------------


def setting_for(delivery: Delivery) -> tuple[SalesforceSource, Writeback] | None:
    """The Salesforce settings and write-back of the delivery's Nexset, when it wants one."""
    nexset = Nexset.objects.filter(pk=delivery.destination.nexset_id).only("kind", "source").first()
    if nexset is None or nexset.kind != Nexset.Kind.SALESFORCE:
        return None
    source = SalesforceSource.from_json(nexset.source)
    if source is None or source.writeback is None:
        return None
    return source, source.writeback


def schedule(delivery: Delivery) -> bool:
    """Enqueue the write-back of a succeeded delivery that created an object, after commit, when its
    Nexset wants one. Returns whether it did."""
    return schedule_many([delivery]) == 1


def schedule_many(deliveries: Iterable[Delivery]) -> int:
    """``schedule`` for a batch of deliveries (a deliver run's response writes): each Nexset's settings
    are read once. Returns how many write-backs were enqueued."""
    wanted: dict[int, bool] = {}
    enqueued = 0
    for delivery in deliveries:
        if delivery.is_test or delivery.state != Delivery.State.SUCCEEDED or not delivery.created_object_id:
            continue
        nexset_id = delivery.destination.nexset_id
        if nexset_id not in wanted:
            wanted[nexset_id] = setting_for(delivery) is not None
        if wanted[nexset_id]:
            transaction.on_commit(functools.partial(_enqueue, delivery.pk))
            enqueued += 1
    return enqueued


def _enqueue(delivery_id: int) -> None:
    from flows import tasks

    try:
        tasks.salesforce_writeback.delay(delivery_id)
    except Exception as exc:  # the broker is down: say so where people look
        log.warning("could not enqueue the Salesforce write-back of delivery %s: %s", delivery_id, exc)
        delivery = Delivery.objects.select_related("destination__nexset").filter(pk=delivery_id).first()
        if delivery is not None:
            _audit(
                delivery.destination.nexset,
                delivery,
                {
                    "outcome": "skipped",
                    "error": "The write-back could not be queued (the task queue is down).",
                },
            )


# -- the task's work --------------------------------------------------------------------------------------


def run(delivery_id: int, only: list[str] | None = None, attempt: int = 1) -> Result:
    """Write the delivery's created id into its source records (``only`` these Ids, on a retry)."""
    result = Result()
    delivery = Delivery.objects.select_related("destination__nexset").filter(pk=delivery_id).first()
    if delivery is None or delivery.state != Delivery.State.SUCCEEDED or not delivery.created_object_id:
        log.info(
            "salesforce write-back: delivery %s has no created object (any more); nothing to do", delivery_id
        )
        return result
    found = setting_for(delivery)
    if found is None:
        log.info("salesforce write-back: turned off for delivery %s's Nexset; nothing to do", delivery_id)
        return result
    source, setting = found
    nexset = delivery.destination.nexset
    ids = list(
        Record.objects.filter(delivery_items__delivery=delivery)
        .order_by("seq")
        .values_list("source_ref", flat=True)
    )
    if only is not None:
        wanted = set(only)
        ids = [ref for ref in ids if ref in wanted]
    value = delivery.created_object_id
    base = {"object": source.object, "field": setting.field, "value": value}
    try:
        link, client = userlink.client(setting.user_id)
    except userlink.NotLinked as exc:
        log.warning("salesforce write-back of delivery %s refused: %s", delivery.uuid, exc)
        _audit(nexset, delivery, {**base, "records": ids, "outcome": "skipped", "error": str(exc)})
        result.outcomes = dict.fromkeys(ids, "skipped")
        return result
    who = {"salesforce_user": link.username, "user": link.user.get_username()}
    with client:
        for position, ref in enumerate(ids):
            try:
                outcome, error = _write(
                    client, source.object, ref, setting.field, value, link.username, attempt
                )
            except Refused as exc:
                rest = ids[position:]
                log.warning("salesforce write-back of delivery %s stopped: %s", delivery.uuid, exc)
                _audit(
                    nexset, delivery, {**base, **who, "records": rest, "outcome": "error", "error": str(exc)}
                )
                result.outcomes.update(dict.fromkeys(rest, "error"))
                return result
            result.outcomes[ref] = outcome
            if outcome == "unavailable" and attempt < ATTEMPTS:
                result.again.append(ref)
            log.log(
                logging.INFO if outcome == "ok" else logging.WARNING,
                "salesforce write-back %s.%s of %s = %s as %s: %s",
                source.object,
                setting.field,
                ref,
                value,
                link.username,
                error or "ok",
            )
            _audit(nexset, delivery, {**base, **who, "record": ref, "outcome": outcome, "error": error})
    return result


class Refused(Exception):
    """The person's Salesforce login does not work (any more): no record can be written with it."""


def _write(
    client: SalesforceClient,
    object_name: str,
    ref: str,
    field_name: str,
    value: str,
    username: str,
    attempt: int,
) -> tuple[str, str]:
    """Write one record: (outcome, message). Refused when the login itself is refused."""
    if not ref or not _RECORD_ID.fullmatch(ref):
        return "skipped", f"{ref or 'The record'} is not a Salesforce record Id."
    try:
        client.update(object_name, ref, {field_name: value})
    except (SessionExpired, userlink.NotLinked, connection.NotConnected, OAuthError) as exc:
        raise Refused(_refused(username, exc)) from None
    except SalesforceUnavailable as exc:
        if attempt < ATTEMPTS:
            return (
                "unavailable",
                f"{exc} Trying again in {RETRY_SECONDS * attempt} s (attempt {attempt} of {ATTEMPTS}).",
            )
        return "unavailable", f"{exc} Gave up after {ATTEMPTS} attempts."
    except SalesforceError as exc:
        return "error", _explain(exc, username, object_name, field_name)
    return "ok", ""


def _refused(username: str, exc: Exception) -> str:
    if isinstance(exc, SessionExpired):
        return (
            f"Salesforce refused the login of {username} ({exc.message}): they disconnect and connect again "
            "on their profile page."
        )
    return str(exc)


def _explain(exc: SalesforceError, username: str, object_name: str, field_name: str) -> str:
    if exc.status == 403:
        advice = (
            f"{username} may not edit this {object_name}: give their profile or permission set edit access "
            f"to {object_name} and the field {field_name}, or pick another user for the write-back."
        )
    elif exc.status == 404:
        advice = f"The {object_name} no longer exists in Salesforce (deleted or merged)."
    elif exc.code in ("INVALID_FIELD", "INVALID_FIELD_FOR_INSERT_UPDATE"):
        advice = f"{field_name} is not an updateable field of {object_name}: pick another field."
    elif exc.code == "STRING_TOO_LONG":
        advice = f"The Clazar id does not fit into {field_name}: make the field longer or pick another."
    else:
        advice = ""
    return f"{exc}. {advice}".strip() if advice else str(exc)


def _audit(nexset: Nexset, delivery: Delivery, details: dict[str, Any]) -> None:
    audit.record(
        None,
        ACTION,
        nexset,
        extra={"delivery": str(delivery.uuid), "destination": delivery.destination.name, **details},
    )


# -- the settings page ------------------------------------------------------------------------------------


def text_fields(object_name: str) -> list[dict[str, Any]]:
    """The object's updateable text fields (from the org's describe data)."""
    return [
        {"name": f["name"], "label": f.get("label") or f["name"], "length": f.get("length") or 0}
        for f in describe.fields(object_name)
        if f.get("updateable") and f.get("type") in TEXT_TYPES and not f.get("calculated")
    ]


def results(nexset: Nexset, limit: int = SHOWN_RESULTS) -> list[dict[str, Any]]:
    """The last write-back outcomes of the Nexset, newest first."""
    events = AuditEvent.objects.filter(action=ACTION, object_type="nexset", object_id=str(nexset.uuid))
    out = []
    for event in events[:limit]:
        details = (event.changes or {}).get("details") or {}
        records = details.get("records")
        out.append(
            {
                "at": event.created_at,
                "outcome": details.get("outcome", ""),
                "record": details.get("record") or ", ".join(records or []),
                "field": details.get("field", ""),
                "value": details.get("value", ""),
                "salesforce_user": details.get("salesforce_user", ""),
                "destination": details.get("destination", ""),
                "error": details.get("error", ""),
            }
        )
    return out


def settings_page(nexset: Nexset, source: SalesforceSource, user: Any) -> dict[str, Any]:
    """Everything the write-back page shows: current setting, the fields and users to pick from, the
    destinations fed by the Nexset (and whether they keep responses), the last results."""
    org = connection.current()
    links = userlink.linked_users(org)
    names = {link.user_id: f"{link.user.get_username()} (Salesforce user {link.username})" for link in links}
    page: dict[str, Any] = {
        "nexset": nexset,
        "source": source,
        "setting": source.writeback,
        "org": org,
        "links": links,
        "names": names,
        "me_linked": user.pk in names,
        "setting_as": names.get(source.writeback.user_id) if source.writeback else None,
        "errors": {},
        "results": results(nexset),
    }
    try:
        page["fields"] = text_fields(source.object)
    except (connection.NotConnected, SalesforceError) as exc:
        page["fields"], page["remote_error"] = [], str(exc)
    known = {f["name"] for f in page["fields"]}
    if source.writeback is not None:
        page["field"], page["user"] = source.writeback.field, source.writeback.user_id
    else:
        page["field"] = next((n for n in ("Clazar_Opportunity_Id__c",) if n in known), "")
        page["user"] = user.pk if user.pk in names else None
    page["destinations"] = []
    for destination in nexset.destinations.order_by("name"):
        config = DestinationConfig.from_json(destination.config)
        page["destinations"].append(
            {"destination": destination, "responses": config.response_webhook, "creates": _creates(config)}
        )
    return page


def _creates(config: DestinationConfig) -> bool | None:
    """Whether the destination creates objects: True/False for a template, None for Advanced (unknown)."""
    if config.mode != "template":
        return None
    try:
        return endpoints.get(config.template).creates
    except KeyError:
        return False


def choose(page: dict[str, Any], field_name: str, user_value: str) -> Writeback:
    """The write-back picked on the page; ChoiceInvalid names what is wrong and what to do."""
    errors: dict[str, list[str]] = {}
    source: SalesforceSource = page["source"]
    if not page["fields"]:
        reason = page.get("remote_error") or f"{source.object} has no text field this user may edit"
        errors["field"] = [f"Could not offer any field ({reason}); the write-back was not saved."]
    elif field_name not in {f["name"] for f in page["fields"]}:
        errors["field"] = [f"Pick one of the updateable text fields of {source.object}."]
    try:
        user_id = int(user_value)
    except (TypeError, ValueError):
        user_id = 0
    if user_id not in page["names"]:
        errors["user"] = [
            "Pick a user whose Salesforce login is linked: each person links theirs on their profile page "
            "(“Connect my Salesforce user”)."
        ]
    if errors:
        raise ChoiceInvalid(errors)
    return Writeback(field_name, user_id)
