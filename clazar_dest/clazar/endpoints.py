"""The Clazar endpoint catalog: one data table, read by the request builder, the wizard and the simulator.

Clazar's public reference documents authentication, reads, metering and a few PATCHes, but not every
path the connector templates use. Keep every path, ID parameter and validation rule in this module so
they can be corrected in one place. Pure data: no Django, no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

CLOUDS: tuple[str, ...] = ("aws", "azure", "gcp")


@dataclass(frozen=True)
class Lookup:
    """How to find out what happened after a create or publish whose outcome is unknown.

    With `param` set, `path` is a list route: GET `path?{param}=<record[field]>` and confirm the
    candidates (for example, created after the attempt started). Without it, `path` is an object route
    using the endpoint's ID parameter: GET it and the call took effect when `done_field == done_value`.
    """

    path: str
    param: str | None = None
    field: str | None = None
    done_field: str | None = None
    done_value: str | None = None


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    help: str
    method: str
    path: str
    id_param: str | None
    id_label: str | None
    has_body: bool
    irreversible: bool
    lookup: Lookup | None
    creates: bool

    @property
    def resource(self) -> str:
        """The collection the endpoint works on, e.g. "private_offers"."""
        return self.path.strip("/").split("/")[0]

    @property
    def action(self) -> str:
        """One of "create", "update", "publish", "delete"."""
        if self.creates:
            return "create"
        if self.method == "DELETE":
            return "delete"
        if self.path.rstrip("/").endswith("/publish"):
            return "publish"
        return "update"

    def path_for(self, object_id: str | None = None) -> str:
        """The path with the ID parameter filled in (URL-encoded)."""
        if self.id_param is None:
            return self.path
        if object_id is None or str(object_id) == "":
            raise ValueError(f"{self.label} needs a {self.id_label}.")
        return self.path.replace("{" + self.id_param + "}", quote(str(object_id), safe=""))


_ID_HELP = (
    " Give the {} as a fixed value or as a record attribute such as {{id}}, so one destination can {} many"
    " objects."
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        key="create_listing",
        label="Create Listing",
        help="Creates a new product listing in Clazar from each record, sent as the JSON body. "
        "Clazar answers with the new listing, including its id.",
        method="POST",
        path="/listings/",
        id_param=None,
        id_label=None,
        has_body=True,
        irreversible=False,
        lookup=Lookup(path="/listings/", param="name", field="name"),
        creates=True,
    ),
    Endpoint(
        key="update_listing",
        label="Update Listing",
        help="Updates an existing listing with the attributes in each record."
        + _ID_HELP.format("Listing ID", "update"),
        method="PUT",
        path="/listings/{listing_id}/",
        id_param="listing_id",
        id_label="Listing ID",
        has_body=True,
        irreversible=False,
        lookup=None,
        creates=False,
    ),
    Endpoint(
        key="create_opportunity",
        label="Create Opportunity",
        help="Creates a co-sell opportunity in Clazar from each record, sent as the JSON body. "
        "Clazar answers with the new opportunity, including its id.",
        method="POST",
        path="/opportunities/",
        id_param=None,
        id_label=None,
        has_body=True,
        irreversible=False,
        lookup=Lookup(path="/opportunities/", param="title", field="title"),
        creates=True,
    ),
    Endpoint(
        key="update_opportunity",
        label="Update Opportunity",
        help="Updates an existing co-sell opportunity with the attributes in each record."
        + _ID_HELP.format("Opportunity ID", "update"),
        method="PUT",
        path="/opportunities/{opportunity_id}/",
        id_param="opportunity_id",
        id_label="Opportunity ID",
        has_body=True,
        irreversible=False,
        lookup=None,
        creates=False,
    ),
    Endpoint(
        key="create_private_offer",
        label="Create Private Offer",
        help="Creates a private offer as a draft from each record, sent as the JSON body. The offer is not "
        "visible to the buyer until it is published.",
        method="POST",
        path="/private_offers/",
        id_param=None,
        id_label=None,
        has_body=True,
        irreversible=False,
        lookup=Lookup(path="/private_offers/", param="name", field="name"),
        creates=True,
    ),
    Endpoint(
        key="update_private_offer",
        label="Update Private Offer",
        help="Updates a draft private offer with the attributes in each record; published offers can't be "
        "changed." + _ID_HELP.format("Private Offer ID", "update"),
        method="PUT",
        path="/private_offers/{private_offer_id}/",
        id_param="private_offer_id",
        id_label="Private Offer ID",
        has_body=True,
        irreversible=False,
        lookup=None,
        creates=False,
    ),
    Endpoint(
        key="publish_private_offer",
        label="Publish Private Offer",
        help="Publishes a draft private offer to the buyer on the cloud marketplace. Warning: this is "
        "irreversible; a published offer can't be edited or unpublished."
        + _ID_HELP.format("Private Offer ID", "publish"),
        method="POST",
        path="/private_offers/{private_offer_id}/publish/",
        id_param="private_offer_id",
        id_label="Private Offer ID",
        has_body=True,
        irreversible=True,
        lookup=Lookup(
            path="/private_offers/{private_offer_id}/", done_field="status", done_value="published"
        ),
        creates=False,
    ),
    Endpoint(
        key="delete_private_offer",
        label="Delete Private Offer",
        help="Deletes a private offer; no body is sent. Warning: this is irreversible; the offer can't be "
        "restored." + _ID_HELP.format("Private Offer ID", "delete"),
        method="DELETE",
        path="/private_offers/{private_offer_id}/",
        id_param="private_offer_id",
        id_label="Private Offer ID",
        has_body=False,
        irreversible=True,
        lookup=None,
        creates=False,
    ),
)

BY_KEY: dict[str, Endpoint] = {e.key: e for e in ENDPOINTS}

# The collections the templates work on, in catalog order.
RESOURCES: tuple[str, ...] = tuple(dict.fromkeys(e.resource for e in ENDPOINTS))

# Validation rules (the simulator enforces them; the wizard may use them for hints).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "listings": ("name", "cloud"),
    "opportunities": ("title", "cloud", "customer_company"),
    "private_offers": ("name", "listing", "buyer"),
    "metering": ("cloud", "contract_id", "dimension", "quantity", "start_time", "end_time"),
}

# Fields that must hold one of a fixed set of values when present.
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "listings": {"cloud": CLOUDS},
    "opportunities": {"cloud": CLOUDS},
    "private_offers": {"cloud": CLOUDS},
    "metering": {"cloud": CLOUDS},
}

# Fields with a type: "number" (int, float or numeric string) or "datetime" (ISO 8601).
FIELD_TYPES: dict[str, dict[str, str]] = {
    "metering": {"quantity": "number", "start_time": "datetime", "end_time": "datetime"},
}

# Set by Clazar; ignored when a request body carries them.
READ_ONLY_FIELDS: tuple[str, ...] = ("id", "created_at", "last_modified_at", "status")

# Exact-match query parameters accepted by the list routes (besides page, page_size and
# last_modified_at_after).
LIST_FILTERS: dict[str, tuple[str, ...]] = {
    "listings": ("name", "cloud"),
    "opportunities": ("title", "cloud", "customer_company"),
    "private_offers": ("name", "listing", "buyer", "status"),
}


def get(key: str) -> Endpoint:
    """The endpoint with this key; KeyError naming the known keys otherwise."""
    try:
        return BY_KEY[key]
    except KeyError:
        known = ", ".join(BY_KEY)
        raise KeyError(f"Unknown Clazar endpoint {key!r}; known endpoints: {known}.") from None
