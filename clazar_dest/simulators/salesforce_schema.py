"""The object catalog of the Salesforce simulator: ids and value formats, the objects and their fields,
and the describe answers built from them.

Values are kept as Salesforce answers them: dates ``2026-01-31``, datetimes ``2026-01-31T10:00:00.000+0000``
(always UTC), numbers as numbers. Ids are 18 characters: key prefix, a zero-padded number and the real
case-checksum suffix. The records themselves live in `clazar_dest.simulators.salesforce_store`.
Stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# -- ids and values ------------------------------------------------------------------------------

_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
ID_PATTERN = re.compile(r"[A-Za-z0-9]{15}(?:[A-Z0-5]{3})?")


def id18(id15: str) -> str:
    """The 18-character form of a 15-character id (the suffix encodes which letters are capitals)."""
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, char in enumerate(id15[start : start + 5]) if "A" <= char <= "Z")
        suffix += _CHECKSUM[bits]
    return id15 + suffix


def make_id(prefix: str, number: int) -> str:
    return id18(f"{prefix}{number:012d}")


def format_datetime(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> datetime:
    """An aware datetime from ``2026-01-31T10:00:00.000+0000`` or ISO 8601 with an offset."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone offset.")
    return moment.astimezone(UTC)


# -- schema --------------------------------------------------------------------------------------

STRINGY = frozenset({"id", "reference", "string", "picklist", "textarea", "email", "phone", "url"})
NUMERIC = frozenset({"currency", "double", "percent", "int"})
SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "currency": "xsd:double",
    "double": "xsd:double",
    "percent": "xsd:double",
    "int": "xsd:int",
    "boolean": "xsd:boolean",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
}
_LABELS = {
    "Id": "Record ID",
    "AccountId": "Account ID",
    "OpportunityId": "Opportunity ID",
    "StageName": "Stage",
    "Type": "Type",
    "IsClosed": "Closed",
    "IsWon": "Won",
    "NumberOfEmployees": "Employees",
    "SystemModstamp": "System Modstamp",
}


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    filterable: bool = True
    sortable: bool = True
    reference_to: tuple[str, ...] = ()
    relationship: str | None = None
    picklist: tuple[str, ...] = ()
    default: str | None = None  # the default picklist value
    label: str = ""

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        if self.name in _LABELS:
            return _LABELS[self.name]
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", self.name.removesuffix("__c")).replace("_", " ")
        return words.replace(" Id", " ID")


@dataclass
class SObject:
    name: str
    label: str
    label_plural: str
    key_prefix: str
    fields: tuple[Field, ...]
    writable: bool = True  # whether the user could ever create, edit or delete it
    index: dict[str, Field] = field(init=False, repr=False)
    relations: dict[str, Field] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {f.name.lower(): f for f in self.fields}
        self.relations = {f.relationship.lower(): f for f in self.fields if f.relationship}

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    def field(self, name: str) -> Field | None:
        return self.index.get(name.lower())


def _string(name: str, length: int = 255, **kw: Any) -> Field:
    return Field(name, "string", length, **kw)


def _pick(name: str, values: Iterable[str], **kw: Any) -> Field:
    return Field(name, "picklist", 255, picklist=tuple(values), **kw)


def _ref(name: str, target: str, relationship: str, **kw: Any) -> Field:
    return Field(name, "reference", 18, reference_to=(target,), relationship=relationship, **kw)


def _fixed(name: str, kind: str, length: int = 0, **kw: Any) -> Field:
    return Field(name, kind, length, createable=False, updateable=False, **kw)


ID = _fixed("Id", "id", 18, nillable=False)
STAMPS = (
    _fixed("CreatedDate", "datetime", nillable=False),
    _fixed("LastModifiedDate", "datetime", nillable=False),
    _fixed("SystemModstamp", "datetime", nillable=False),
)
INDUSTRIES = (
    "Agriculture",
    "Banking",
    "Biotechnology",
    "Communications",
    "Consulting",
    "Education",
    "Energy",
    "Finance",
    "Healthcare",
    "Insurance",
    "Manufacturing",
    "Media",
    "Retail",
    "Technology",
    "Transportation",
    "Other",
)
STAGES = {  # stage -> (default probability, closed, won)
    "Prospecting": (10.0, False, False),
    "Qualification": (10.0, False, False),
    "Needs Analysis": (20.0, False, False),
    "Value Proposition": (50.0, False, False),
    "Proposal/Price Quote": (75.0, False, False),
    "Negotiation/Review": (90.0, False, False),
    "Closed Won": (100.0, True, True),
    "Closed Lost": (0.0, True, False),
}
OPPORTUNITY_TYPES = (
    "New Customer",
    "Existing Customer - Upgrade",
    "Existing Customer - Replacement",
    "Existing Customer - Downgrade",
)
LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")
CLOUDS = ("AWS", "Azure", "GCP")
LEAD_STATUSES = (
    "Open - Not Contacted",
    "Working - Contacted",
    "Closed - Converted",
    "Closed - Not Converted",
)
QUOTE_STATUSES = ("Draft", "Needs Review", "In Review", "Approved", "Rejected", "Presented", "Accepted")

SCHEMA: dict[str, SObject] = {
    o.name: o
    for o in (
        SObject(
            "Account",
            "Account",
            "Accounts",
            "001",
            (
                ID,
                _string("Name", nillable=False, label="Account Name"),
                Field("Website", "url", 255),
                _pick("Industry", INDUSTRIES),
                _string("BillingCountry", 80),
                _string("BillingState", 80),
                _string("BillingCity", 40),
                Field("Phone", "phone", 40, label="Account Phone"),
                Field("NumberOfEmployees", "int"),
                Field("AnnualRevenue", "currency"),
                *STAMPS,
            ),
        ),
        SObject(
            "Contact",
            "Contact",
            "Contacts",
            "003",
            (
                ID,
                _string("FirstName", 40),
                _string("LastName", 80, nillable=False),
                Field("Email", "email", 80),
                Field("Phone", "phone", 40, label="Business Phone"),
                _string("Title", 128),
                _ref("AccountId", "Account", "Account"),
                *STAMPS,
            ),
        ),
        SObject(
            "Opportunity",
            "Opportunity",
            "Opportunities",
            "006",
            (
                ID,
                _string("Name", 120, nillable=False, label="Opportunity Name"),
                _ref("AccountId", "Account", "Account"),
                Field("Amount", "currency"),
                Field("CloseDate", "date", label="Close Date"),
                _pick("StageName", STAGES, nillable=False),
                Field("Probability", "percent", label="Probability (%)"),
                _pick("Type", OPPORTUNITY_TYPES, label="Opportunity Type"),
                _pick("LeadSource", LEAD_SOURCES),
                Field("Description", "textarea", 32000, filterable=False, sortable=False),
                _string("NextStep", 255),
                _fixed("IsClosed", "boolean", nillable=False),
                _fixed("IsWon", "boolean", nillable=False),
                _pick("Cloud_Provider__c", CLOUDS),
                _string("Clazar_Opportunity_Id__c", 64),
                *STAMPS,
            ),
        ),
        SObject(
            "Lead",
            "Lead",
            "Leads",
            "00Q",
            (
                ID,
                _string("FirstName", 40),
                _string("LastName", 80, nillable=False),
                _string("Company", 255, nillable=False),
                Field("Email", "email", 80),
                _pick("Status", LEAD_STATUSES, nillable=False, default=LEAD_STATUSES[0]),
                *STAMPS,
            ),
        ),
        SObject(
            "Quote",
            "Quote",
            "Quotes",
            "0Q0",
            (
                ID,
                _string("Name", 255, nillable=False, label="Quote Name"),
                _ref("OpportunityId", "Opportunity", "Opportunity", updateable=False),
                _pick("Status", QUOTE_STATUSES, default="Draft"),
                Field("ExpirationDate", "date"),
                _fixed("GrandTotal", "currency"),
                *STAMPS,
            ),
        ),
        SObject(
            "Organization",
            "Organization",
            "Organizations",
            "00D",
            (ID, _fixed("Name", "string", 80), *STAMPS),
            writable=False,
        ),
        SObject(
            "User",
            "User",
            "Users",
            "005",
            (
                ID,
                _fixed("Username", "string", 80, nillable=False),
                _fixed("Name", "string", 121, label="Full Name"),
                _fixed("Email", "email", 128, nillable=False),
                *STAMPS,
            ),
            writable=False,
        ),
    )
}
CHILDREN = {  # parent -> [(child object, reference field, child relationship name)]
    "Account": [("Contact", "AccountId", "Contacts"), ("Opportunity", "AccountId", "Opportunities")],
    "Opportunity": [("Quote", "OpportunityId", "Quotes")],
}


def default_permissions() -> dict[str, dict[str, bool]]:
    return {
        name: {"read": True, "create": o.writable, "edit": o.writable, "delete": o.writable}
        for name, o in SCHEMA.items()
    }


def find_object(name: str) -> SObject | None:
    """The object called `name`, compared without case as Salesforce does."""
    lowered = name.lower()
    return next((o for o in SCHEMA.values() if o.name.lower() == lowered), None)


# -- describe ------------------------------------------------------------------------------------


def _object_flags(obj: SObject, perms: dict[str, bool]) -> dict[str, Any]:
    return {
        "name": obj.name,
        "label": obj.label,
        "labelPlural": obj.label_plural,
        "keyPrefix": obj.key_prefix,
        "custom": obj.custom,
        "queryable": perms["read"],
        "retrieveable": perms["read"],
        "searchable": perms["read"],
        "createable": obj.writable and perms["create"],
        "updateable": obj.writable and perms["edit"],
        "deletable": obj.writable and perms["delete"],
    }


def _urls(obj: SObject, version: str) -> dict[str, str]:
    base = f"/services/data/{version}/sobjects/{obj.name}"
    return {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"}


def describe_global(permissions: dict[str, dict[str, bool]], version: str) -> dict[str, Any]:
    sobjects = [
        {**_object_flags(o, permissions[o.name]), "urls": _urls(o, version)}
        for o in SCHEMA.values()
        if permissions[o.name]["read"]
    ]
    return {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects}


def describe_field(f: Field, perms: dict[str, bool], writable: bool) -> dict[str, Any]:
    numeric = f.type in NUMERIC
    return {
        "name": f.name,
        "label": f.title,
        "type": f.type,
        "soapType": SOAP_TYPES.get(f.type, "xsd:string"),
        "custom": f.custom,
        "nillable": f.nillable,
        "length": 0 if numeric or f.type in ("boolean", "date", "datetime") else f.length,
        "precision": 18 if f.type in ("currency", "double") else 3 if f.type == "percent" else 0,
        "scale": 2 if f.type == "currency" else 0,
        "digits": 9 if f.type == "int" else 0,
        "createable": f.createable and writable and perms["create"],
        "updateable": f.updateable and writable and perms["edit"],
        "filterable": f.filterable,
        "sortable": f.sortable,
        "calculated": False,
        "idLookup": f.name == "Id",
        "externalId": False,
        "unique": False,
        "referenceTo": list(f.reference_to),
        "relationshipName": f.relationship,
        "picklistValues": [
            {"value": v, "label": v, "active": True, "defaultValue": v == f.default, "validFor": None}
            for v in f.picklist
        ],
    }


def describe(obj: SObject, perms: dict[str, bool], version: str) -> dict[str, Any]:
    return {
        **_object_flags(obj, perms),
        "fields": [describe_field(f, perms, obj.writable) for f in obj.fields],
        "childRelationships": [
            {"childSObject": c, "field": ref, "relationshipName": rel, "cascadeDelete": False}
            for c, ref, rel in CHILDREN.get(obj.name, [])
        ],
        "urls": _urls(obj, version),
    }
