"""The record store of the Salesforce simulator: values checked against a field, the records by object
and Id with the simulated clock, and a deterministic seed.

Records keep values as Salesforce answers them (see `clazar_dest.simulators.salesforce_schema`, which also
holds the objects and fields). The store is not thread-safe on its own: the simulator calls it under its
lock. Stdlib only.
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from clazar_dest.simulators.salesforce_schema import (
    CLOUDS,
    ID_PATTERN,
    INDUSTRIES,
    LEAD_SOURCES,
    LEAD_STATUSES,
    NUMERIC,
    OPPORTUNITY_TYPES,
    QUOTE_STATUSES,
    SCHEMA,
    STAGES,
    STRINGY,
    Field,
    format_datetime,
    id18,
    make_id,
    parse_datetime,
)

# -- writing values ------------------------------------------------------------------------------


class ValueProblem(ValueError):
    """A value that does not fit a field; `code` is the Salesforce errorCode to answer."""

    def __init__(self, code: str, message: str, field_name: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field_name


def coerce(f: Field, value: Any) -> Any:
    """`value` as the store keeps it for field `f` (as a REST body would set it); ValueProblem if it
    does not fit. Python dates and datetimes are accepted too."""

    def wrong(kind: str) -> ValueProblem:
        return ValueProblem(
            "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of {kind} from {type(value).__name__} value {value!r} "
            f"or request may be missing a required field (field {f.name})",
            f.name,
        )

    if value is None:
        return None  # the caller decides whether the field may be null
    kind = f.type
    if kind in STRINGY:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise wrong("string")
        text = str(value)
        if f.length and len(text) > f.length:
            raise ValueProblem(
                "STRING_TOO_LONG",
                f"{f.title}: data value too large: {text[:40]}{'...' if len(text) > 40 else ''} "
                f"(max length={f.length})",
                f.name,
            )
        return text
    if kind in NUMERIC:
        if isinstance(value, bool):
            raise wrong("double")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise wrong("double") from None
        if not math.isfinite(number):
            raise wrong("double")
        return int(number) if kind == "int" else number
    if kind == "boolean":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise wrong("boolean")
        return value
    if kind == "date":
        if isinstance(value, datetime):
            return value.date().isoformat()
        if isinstance(value, date):
            return value.isoformat()
        try:
            return date.fromisoformat(value[:10]).isoformat()
        except (TypeError, ValueError):
            raise wrong("date") from None
    if kind == "datetime":
        if isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            return format_datetime(moment)
        try:
            return format_datetime(parse_datetime(value))
        except (TypeError, ValueError):
            raise wrong("datetime") from None
    return value


# -- the store -----------------------------------------------------------------------------------

SEED_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SEED_CLOSE = date(2026, 1, 15)
_STEMS = (
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Hooli",
    "Pied Piper",
    "Soylent",
    "Tyrell",
    "Cyberdyne",
    "Wonka",
    "O'Reilly",
    "Müller",
    "Vandelay",
    "Massive Dynamic",
    "Aperture",
    "Black Mesa",
    "Oscorp",
    "Nakatomi",
)
_SUFFIXES = ("Inc.", "Corp", "Group", "GmbH", "Labs", "Holdings", "Systems", "Partners")
_PLACES = (
    ("United States", "CA", "San Francisco"),
    ("United States", "NY", "New York"),
    ("United States", "TX", "Austin"),
    ("Germany", "BY", "Munich"),
    ("United Kingdom", None, "London"),
    ("Japan", None, "Tokyo"),
    ("Canada", "ON", "Toronto"),
    ("Australia", "NSW", "Sydney"),
)
_PRODUCTS = (
    "Data Platform",
    "Analytics Suite",
    "Security Add-on",
    "Support Renewal",
    "Expansion",
    "Migration",
)
_FIRST = ("Ada", "Grace", "Alan", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Edsger")
_LAST = ("Lovelace", "Hopper", "Turing", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie", "Allen")


class Store:
    """Records by object and Id (dicts keep creation order), and the simulated clock."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in SCHEMA}
        self.numbers: dict[str, int] = dict.fromkeys(SCHEMA, 0)
        self.clock_ms = 0  # never goes back, even across seeds

    # -- the clock ---------------------------------------------------------------------------------

    def stamp(self) -> str:
        """Now, as a Salesforce datetime one millisecond past any stamp handed out before."""
        self.clock_ms = max(time.time_ns() // 1_000_000, self.clock_ms + 1)
        return format_datetime(datetime.fromtimestamp(self.clock_ms / 1000, UTC))

    # -- reading -----------------------------------------------------------------------------------

    def get(self, name: str, record_id: str) -> dict[str, Any] | None:
        table = self.data[name]
        found = table.get(record_id)
        if found is None and len(record_id) == 15:
            found = table.get(id18(record_id))
        return found

    def records(self, name: str) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.data[name].values()))

    def counts(self) -> dict[str, int]:
        return {name: len(table) for name, table in self.data.items()}

    # -- writing -----------------------------------------------------------------------------------

    def _new_id(self, name: str) -> str:
        self.numbers[name] += 1
        return make_id(SCHEMA[name].key_prefix, self.numbers[name])

    def add(self, name: str, values: dict[str, Any], *, stamp: str | None = None) -> dict[str, Any]:
        """Store a new record; unset fields are null, stamps are now unless given. Checks names only."""
        obj = SCHEMA[name]
        record: dict[str, Any] = dict.fromkeys(f.name for f in obj.fields)
        given = {}
        for key, value in values.items():
            f = obj.field(key)
            if f is None:
                raise ValueError(f"{name} has no field {key!r}.")
            given[f.name] = record[f.name] = coerce(f, value)
        record["Id"] = record["Id"] or self._new_id(name)
        when = stamp or self.stamp()
        for key in ("CreatedDate", "LastModifiedDate", "SystemModstamp"):
            record[key] = record[key] or when
        # a stamp given from the future still keeps the clock ahead of every stamp
        self.clock_ms = max(self.clock_ms, int(parse_datetime(record["SystemModstamp"]).timestamp() * 1000))
        if name == "Opportunity":
            for flag in ("IsClosed", "IsWon"):
                record[flag] = bool(record[flag])
            derive_stage(record, given)
        self.data[name][record["Id"]] = record
        return record

    def change(self, name: str, record: dict[str, Any], changes: dict[str, Any]) -> None:
        """Apply already-checked `changes` (field name -> stored value) and bump the modification stamps."""
        record.update(changes)
        if name == "Opportunity" and "StageName" in changes:
            derive_stage(record, changes)
        record["LastModifiedDate"] = record["SystemModstamp"] = self.stamp()

    def checked_changes(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A REST update body checked against the schema, as field name -> stored value.
        ValueProblem names the first problem (the errorCode Salesforce answers)."""
        obj = SCHEMA[name]
        changes: dict[str, Any] = {}
        for key, value in body.items():
            f = obj.field(key) if key != "attributes" else None
            if key == "attributes":
                continue
            if f is None:
                raise ValueProblem(
                    "INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}", key
                )
            if not f.updateable:
                raise ValueProblem(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {f.name}. Please check the security settings of this "
                    "field and verify that it is read/write for your profile or permission set.",
                    f.name,
                )
            stored = coerce(f, value)
            if stored is None and not f.nillable:
                raise ValueProblem(
                    "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f.name}]", f.name
                )
            if stored is not None and f.type == "reference":
                stored = self._reference(f, stored)
            changes[f.name] = stored
        return changes

    def _reference(self, f: Field, value: str) -> str:
        """The 18-character id of the existing parent `value` names; ValueProblem otherwise."""
        target = f.reference_to[0]
        if not ID_PATTERN.fullmatch(value):
            raise ValueProblem("MALFORMED_ID", f"{f.title}: id value of incorrect type: {value}", f.name)
        parent = self.get(target, value)
        if parent is None:
            raise ValueProblem(
                "INVALID_CROSS_REFERENCE_KEY",
                f"invalid cross reference id ({f.name} {value} is not an existing {target})",
                f.name,
            )
        return parent["Id"]

    # -- seeding -----------------------------------------------------------------------------------

    def seed(
        self,
        accounts: int,
        opportunities: int,
        org: tuple[str, str],
        user: tuple[str, str, str],
    ) -> dict[str, int]:
        """Replace every record with a deterministic data set (the same counts give the same data)."""
        for label, count in (("accounts", accounts), ("opportunities", opportunities)):
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 200_000:
                raise ValueError(f"{label} must be a whole number from 0 to 200000, not {count!r}.")
        self.data = {name: {} for name in SCHEMA}
        self.numbers = dict.fromkeys(SCHEMA, 0)
        rng = random.Random(20260105)
        moments = _moments()
        self.set_identity(org, user, next(moments))
        account_ids = [self._seed_account(i, rng, next(moments)) for i in range(accounts)]
        names = {a: self.data["Account"][a]["Name"] for a in account_ids}
        for i, account_id in enumerate(account_ids):
            for j in range(2):
                first, last = _FIRST[(i + j * 3) % len(_FIRST)], _LAST[(i * 2 + j) % len(_LAST)]
                slug = re.sub(r"[^a-z]+", "", names[account_id].lower())[:12] or "example"
                self._put(
                    "Contact",
                    {
                        "FirstName": first,
                        "LastName": last,
                        "Email": f"{first.lower()}.{last.lower()}@{slug}.example",
                        "Phone": f"+1 415 555 {1000 + i * 2 + j:04d}",
                        "Title": ("CTO", "VP Sales", "Procurement Lead", "CFO")[(i + j) % 4],
                        "AccountId": account_id,
                    },
                    next(moments),
                )
        for i in range(opportunities):
            self._seed_opportunity(i, rng, account_ids, names, next(moments))
        for i in range(max(3, accounts // 2)):
            first, last = _FIRST[(i * 3) % len(_FIRST)], _LAST[(i * 5) % len(_LAST)]
            self._put(
                "Lead",
                {
                    "FirstName": first,
                    "LastName": last,
                    "Company": f"{_STEMS[(i * 7) % len(_STEMS)]} Prospects {i + 1}",
                    "Email": f"{first.lower()}.{last.lower()}{i}@prospect.example",
                    "Status": LEAD_STATUSES[i % len(LEAD_STATUSES)],
                },
                next(moments),
            )
        return self.counts()

    def set_identity(
        self, org: tuple[str, str], user: tuple[str, str, str], stamp: str | None = None
    ) -> None:
        """(Re)write the one Organization and the one User record from the simulator's settings."""
        when = stamp or self.stamp()
        (org_id, org_name), (user_id, username, display) = org, user
        for name, values in (
            ("Organization", {"Id": org_id, "Name": org_name}),
            ("User", {"Id": user_id, "Username": username, "Name": display, "Email": username}),
        ):
            old = next(iter(self.data[name].values()), None)
            record = self._stamped(values, name, when)
            if old is not None:
                record["CreatedDate"] = old["CreatedDate"]
            self.data[name] = {record["Id"]: record}

    def _stamped(self, values: dict[str, Any], name: str, when: str) -> dict[str, Any]:
        record = dict.fromkeys(f.name for f in SCHEMA[name].fields)
        record.update(values)
        record["CreatedDate"] = record["LastModifiedDate"] = record["SystemModstamp"] = when
        return record

    def _put(self, name: str, values: dict[str, Any], when: str) -> str:
        """Fast path for the seed: trusted values, no checks."""
        record = dict.fromkeys(f.name for f in SCHEMA[name].fields)
        record.update(values)
        record["Id"] = self._new_id(name)
        record["CreatedDate"] = record["LastModifiedDate"] = record["SystemModstamp"] = when
        self.data[name][record["Id"]] = record
        self.clock_ms = max(self.clock_ms, int(parse_datetime(when).timestamp() * 1000))
        return record["Id"]

    def _seed_account(self, i: int, rng: random.Random, when: str) -> str:
        stem, suffix = _STEMS[i % len(_STEMS)], _SUFFIXES[(i // len(_STEMS)) % len(_SUFFIXES)]
        rounds = i // (len(_STEMS) * len(_SUFFIXES))
        name = f"{stem} {suffix}" + (f" {rounds + 1}" if rounds else "")
        country, state, city = _PLACES[i % len(_PLACES)]
        slug = re.sub(r"[^a-z0-9]+", "", name.lower())
        return self._put(
            "Account",
            {
                "Name": name,
                "Website": None if i % 9 == 8 else f"https://www.{slug}.example",
                "Industry": INDUSTRIES[i % len(INDUSTRIES)],
                "BillingCountry": country,
                "BillingState": state,
                "BillingCity": city,
                "Phone": f"+1 212 555 {i % 10_000:04d}",
                "NumberOfEmployees": rng.randrange(5, 50_000),
                "AnnualRevenue": float(rng.randrange(1, 5_000) * 100_000),
            },
            when,
        )

    def _seed_opportunity(
        self, i: int, rng: random.Random, account_ids: list[str], names: dict[str, str], when: str
    ) -> None:
        account_id = account_ids[i % len(account_ids)] if account_ids and i % 11 != 5 else None
        product = _PRODUCTS[i % len(_PRODUCTS)]
        stage = list(STAGES)[rng.randrange(len(STAGES))]
        probability, closed, won = STAGES[stage]
        close = None if i % 9 == 4 else (SEED_CLOSE + timedelta(days=rng.randrange(0, 540))).isoformat()
        buyer = names[account_id] if account_id else None
        amount = None if i % 13 == 7 else float(rng.randrange(5, 500) * 1000)
        description = f"{product} for {buyer or 'a new buyer'}.\nSeeded by the Salesforce simulator."
        opportunity_id = self._put(
            "Opportunity",
            {
                "Name": f"{buyer} - {product}" if buyer else f"Direct deal {i + 1} - {product}",
                "AccountId": account_id,
                "Amount": amount,
                "CloseDate": close,
                "StageName": stage,
                "Probability": probability,
                "Type": None if i % 6 == 3 else OPPORTUNITY_TYPES[i % len(OPPORTUNITY_TYPES)],
                "LeadSource": LEAD_SOURCES[i % len(LEAD_SOURCES)],
                "Description": None if i % 3 else description,
                "NextStep": ("Send proposal", "Schedule demo", "Legal review", None)[i % 4],
                "IsClosed": closed,
                "IsWon": won,
                "Cloud_Provider__c": (*CLOUDS, None)[i % 4] if i % 7 != 6 else None,
                "Clazar_Opportunity_Id__c": None,
            },
            when,
        )
        if account_id and i % 4 == 0:
            self._put(
                "Quote",
                {
                    "Name": f"Q-{i + 1:05d} {product}",
                    "OpportunityId": opportunity_id,
                    "Status": QUOTE_STATUSES[i % len(QUOTE_STATUSES)],
                    "ExpirationDate": close,
                    "GrandTotal": amount,
                },
                when,
            )


def derive_stage(record: dict[str, Any], given: dict[str, Any]) -> None:
    """IsClosed and IsWon follow the stage; Probability takes the stage's default unless it was set."""
    stage = STAGES.get(record.get("StageName") or "")
    if stage is None:
        return
    probability, closed, won = stage
    record["IsClosed"], record["IsWon"] = closed, won
    if "Probability" not in given:
        record["Probability"] = probability


def _moments() -> Iterable[str]:
    """Distinct seed timestamps, seven minutes apart, from SEED_START."""
    moment = SEED_START
    step = timedelta(minutes=7)
    while True:
        yield format_datetime(moment)
        moment += step
