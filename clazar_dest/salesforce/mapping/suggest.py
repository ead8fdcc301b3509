"""A first mapping for Opportunity, drafted from its describe data."""

from __future__ import annotations

from typing import Any

from clazar_dest.salesforce.mapping.rules import Mapping, Rule
from clazar_dest.salesforce.mapping.targets import SALESFORCE_STAGES, TARGETS


def suggest(fields: list[dict[str, Any]]) -> Mapping:
    """A first mapping for Opportunity, using only fields in ``fields`` (describe data: dicts with name,
    type, relationshipName, referenceTo). Parent fields need the relationship (relationshipName "Account").
    Cloud falls back to the constant "aws" (and is that constant when there is no Cloud_Provider__c)."""
    names: dict[str, str] = {}
    relations: dict[str, str] = {}
    for item in fields:
        if not isinstance(item, dict):
            continue
        name, relation = item.get("name"), item.get("relationshipName")
        if isinstance(name, str) and name:
            names.setdefault(name.casefold(), name)
        if isinstance(relation, str) and relation:
            relations.setdefault(relation.casefold(), relation)
    out: dict[str, Rule] = {}

    def add(target: str, name: str, **kwargs: Any) -> None:
        found = names.get(name.casefold())
        if found:
            out[target] = Rule("field", found, **kwargs)

    add("title", "Name")
    cloud = names.get("cloud_provider__c")
    if cloud:
        clouds = {"AWS": "aws", "Azure": "azure", "GCP": "gcp"}
        out["cloud"] = Rule("field", cloud, fallback=Rule("constant", "aws"), values=clouds)
    else:
        out["cloud"] = Rule("constant", "aws")
    account = relations.get("account")
    if account:
        out["customer_company"] = Rule("field", f"{account}.Name")
        out["customer_website"] = Rule("field", f"{account}.Website")
        out["customer_country"] = Rule("field", f"{account}.BillingCountry")
    add("target_close_date", "CloseDate", fallback=Rule("expression", "today + 15 days"))
    add("stage", "StageName", values=dict(SALESFORCE_STAGES))
    add("expected_revenue", "Amount")
    add("description", "Description")
    return Mapping({t.name: out[t.name] for t in TARGETS if t.name in out}, {})
