"""A Salesforce Nexset's settings, kept in ``Nexset.source`` and read only through ``SalesforceSource``.

object and fields come from the org's describe data; ``filter`` is a SOQL condition; ``every`` is the
schedule in minutes (None = pull by hand); ``mapping`` (optional) is a field mapping to Clazar co-sell
opportunity fields (clazar_dest/salesforce/mapping/): with it, records hold the mapped fields only.
``writeback`` (optional) writes the Clazar id of an object a destination created from a record back into
a text field of the source Salesforce record, as one app user's own Salesforce login
(flows/salesforce/writeback.py): ``{"field": "Clazar_Opportunity_Id__c", "user_id": 3}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clazar_dest.salesforce import soql
from clazar_dest.salesforce.mapping import Mapping, MappingInvalid, source_fields

SCHEDULES = (5, 15, 30, 60, 180, 360, 720, 1440)
MAX_FIELDS = 200


class SourceInvalid(ValueError):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Writeback:
    """Write the created Clazar id into ``field`` of the source record, as app user ``user_id``."""

    field: str
    user_id: int

    @classmethod
    def from_json(cls, data: Any) -> Writeback | None:
        """The setting, or None when it is off or unreadable (a write-back never guesses)."""
        if not isinstance(data, dict):
            return None
        name, user_id = data.get("field"), data.get("user_id")
        if not isinstance(name, str) or not name or isinstance(user_id, bool) or not isinstance(user_id, int):
            return None
        return cls(name, user_id)

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "user_id": self.user_id}


@dataclass(frozen=True)
class SalesforceSource:
    object: str
    fields: tuple[str, ...]
    filter: str = ""
    every: int | None = None
    mapping: Mapping | None = field(default=None, compare=False)
    writeback: Writeback | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SalesforceSource | None:
        """The settings, or None when the Nexset has none (new, or cleared by an org switch)."""
        if not data or not data.get("object"):
            return None
        mapping = Mapping.from_json(data["mapping"]) if data.get("mapping") else None
        return cls(
            object=data["object"],
            fields=tuple(data.get("fields") or ()),
            filter=data.get("filter") or "",
            every=data.get("every"),
            mapping=mapping,
            writeback=Writeback.from_json(data.get("writeback")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "fields": list(self.fields),
            "filter": self.filter,
            "every": self.every,
            "mapping": self.mapping.to_json() if self.mapping else None,
            "writeback": self.writeback.to_json() if self.writeback else None,
        }

    def selected(self) -> list[str]:
        """The fields a pull SELECTs: the chosen ones plus what the mapping reads."""
        names = list(self.fields)
        if self.mapping is not None:
            seen = {name.lower() for name in names}  # SOQL names are case-insensitive; no field twice
            names += [name for name in source_fields(self.mapping) if name.lower() not in seen]
        return names

    def query(self, since: Any = None, limit: int | None = None) -> str:
        return soql.select(self.object, self.selected(), where=self.filter or None, since=since, limit=limit)


def build(
    object_name: str,
    fields: list[str],
    filter_text: str,
    every: str | int | None,
    describe_fields: list[dict] | None,
    mapping: Mapping | None = None,
    writeback: Writeback | None = None,
) -> SalesforceSource:
    """Validate settings from a form against the object's describe data; SourceInvalid names each field.
    ``mapping`` and ``writeback`` are kept as they are (they have their own pages); a write-back field the
    object does not have is an error, so changing the object never silently breaks the write-back."""
    errors: dict[str, list[str]] = {}
    try:
        soql.field_path(object_name)
    except ValueError:
        errors["object"] = ["Pick an object from the list."]
    known = {f["name"] for f in describe_fields or ()}
    chosen: list[str] = []
    for name in fields:
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        errors.setdefault("fields", []).append("Pick at least one field.")
    unknown = [name for name in chosen if "." not in name and known and name not in known]
    if unknown:
        errors.setdefault("fields", []).append(f"Not fields of {object_name}: {', '.join(unknown)}.")
    if len(chosen) > MAX_FIELDS:
        errors.setdefault("fields", []).append(f"Pick at most {MAX_FIELDS} fields.")
    for name in chosen:
        try:
            soql.field_path(name)
        except ValueError as exc:
            errors.setdefault("fields", []).append(str(exc))
    text = (filter_text or "").strip()
    if text:
        try:
            text = soql.check_filter(text)
        except ValueError as exc:
            errors["filter"] = [str(exc)]
    minutes: int | None = None
    if every not in (None, "", "manual"):
        try:
            minutes = int(every)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            minutes = -1
        if minutes not in SCHEDULES:
            errors["every"] = ["Pick a schedule from the list."]
    if writeback is not None and known and writeback.field not in known:
        errors.setdefault("object", []).append(
            f"The write-back writes into {writeback.field}, which {object_name} does not have: turn the "
            "write-back off first, or keep the object."
        )
    if errors:
        raise SourceInvalid(errors)
    return SalesforceSource(object_name, tuple(chosen), text, minutes, mapping, writeback)


__all__ = ["SCHEDULES", "MappingInvalid", "SalesforceSource", "SourceInvalid", "Writeback", "build"]
