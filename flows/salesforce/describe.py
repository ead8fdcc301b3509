"""The org's describe data for pickers, cached for a few minutes per org (describe calls count against the
org's API limits, and a picker re-renders on every change)."""

from __future__ import annotations

from django.core.cache import cache

from flows.salesforce import connection

TTL = 300
PARENTS = ("Account", "Opportunity", "Contact")  # parent objects whose fields are offered as Parent.Field


def _org() -> str:
    """The connected org's id, the first part of every cache key (one query: read it once per call)."""
    row = connection.current()
    return row.org_id if row else "-"


def forget(*names: str) -> None:
    """Drop the cached object list and the named objects' fields of the connected org."""
    org = _org()
    cache.delete_many([f"sf:{org}:objects", *(f"sf:{org}:fields:{name}" for name in names)])


def objects() -> list[dict]:
    """Queryable objects, by label."""
    key = f"sf:{_org()}:objects"
    found = cache.get(key)
    if found is None:
        found = sorted(
            (
                {"name": o["name"], "label": o.get("label") or o["name"]}
                for o in connection.client().describe_global()
                if o.get("queryable")
            ),
            key=lambda o: o["label"].lower(),
        )
        cache.set(key, found, TTL)
    return found


def fields(name: str, org: str | None = None) -> list[dict]:
    """The object's fields as describe gives them (``org``: the connected org's id, when known)."""
    key = f"sf:{org or _org()}:fields:{name}"
    found = cache.get(key)
    if found is None:
        found = connection.client().describe(name).get("fields", [])
        cache.set(key, found, TTL)
    return found


def field_choices(name: str) -> list[dict]:
    """Fields to pick: the object's own, then Parent.Field for its lookups to common parents."""
    org = _org()
    own = fields(name, org)
    choices = [
        {"path": f["name"], "label": f.get("label") or f["name"], "type": f.get("type", "")} for f in own
    ]
    for f in own:
        targets = f.get("referenceTo") or []
        relation = f.get("relationshipName")
        if f.get("type") != "reference" or not relation or len(targets) != 1 or targets[0] not in PARENTS:
            continue
        for parent in fields(targets[0], org):
            if parent.get("type") in ("reference", "id", "base64", "address", "location"):
                continue
            choices.append(
                {
                    "path": f"{relation}.{parent['name']}",
                    "label": f"{relation} › {parent.get('label') or parent['name']}",
                    "type": parent.get("type", ""),
                }
            )
    return choices
