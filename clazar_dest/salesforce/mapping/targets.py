"""The Clazar co-sell opportunity fields a mapping fills (``TARGETS``) and how a value is coerced to each
field's kind (``_coerce``; ``_plain`` for custom properties). A value that can't be coerced raises
``_Fail`` with a message that says what was expected.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from clazar_dest.clazar.endpoints import CLOUDS
from clazar_dest.salesforce.mapping.values import _bad, _Fail, _key, _kind_of, _show

KINDS = ("text", "choice", "date", "number", "url", "country")
STAGES = (
    "prospect",
    "qualified",
    "technical_validation",
    "business_validation",
    "committed",
    "launched",
    "closed_lost",
)
MAX_CUSTOM_SIZE = 10_000  # characters of a custom property's value (as JSON for lists and objects)
MAX_URL = 2_000

# ---------------------------------------------------------------------------------------------------------
# Targets: the Clazar co-sell opportunity fields


@dataclass(frozen=True)
class Target:
    """A Clazar opportunity field. ``choices``: the allowed values of a "choice" target; for "text" the
    usual values, offered on the page but not enforced. ``max_length`` bounds "text" values."""

    name: str
    label: str
    kind: str
    required: bool
    help: str
    choices: tuple[str, ...] = ()
    max_length: int | None = None


TARGETS: tuple[Target, ...] = (
    Target(
        "title",
        "Title",
        "text",
        True,
        "The opportunity's name in Clazar, at most 255 characters.",
        max_length=255,
    ),
    Target(
        "cloud",
        "Cloud",
        "choice",
        True,
        "The cloud marketplace: aws, azure or gcp. Names such as Amazon Web Services, Microsoft Azure and "
        "Google Cloud are recognised; map anything else in the value map.",
        choices=CLOUDS,
    ),
    Target(
        "customer_company",
        "Customer company",
        "text",
        True,
        "The customer's company name, at most 255 characters.",
        max_length=255,
    ),
    Target(
        "customer_website",
        "Customer website",
        "url",
        False,
        "The customer's web site; a bare domain such as acme.com becomes https://acme.com.",
    ),
    Target(
        "customer_country",
        "Customer country",
        "country",
        False,
        "A 2-letter ISO country code such as US or DE; common names (United States, USA, Germany) are "
        "recognised, map others in the value map.",
    ),
    Target(
        "target_close_date",
        "Target close date",
        "date",
        False,
        "When the deal should close, sent as YYYY-MM-DD; Salesforce dates and datetimes are accepted.",
    ),
    Target(
        "stage",
        "Stage",
        "text",
        False,
        "The co-sell stage. Clazar's stages: "
        + ", ".join(STAGES)
        + ". Map Salesforce stages in the value map.",
        choices=STAGES,
        max_length=255,
    ),
    Target(
        "expected_revenue",
        "Expected revenue",
        "number",
        False,
        "The deal's expected revenue as a number (1200 or 1200.50).",
    ),
    Target(
        "description",
        "Description",
        "text",
        False,
        "Free text about the deal, at most 10,000 characters.",
        max_length=10_000,
    ),
)

BY_NAME: dict[str, Target] = {t.name: t for t in TARGETS}

_CLOUD_NAMES = {
    "aws": "aws",
    "amazon": "aws",
    "amazon web services": "aws",
    "azure": "azure",
    "microsoft azure": "azure",
    "gcp": "gcp",
    "google cloud": "gcp",
    "google cloud platform": "gcp",
}

_COUNTRY_NAMES = {
    "us": "US",
    "usa": "US",
    "united states": "US",
    "united states of america": "US",
    "america": "US",
    "uk": "GB",
    "gbr": "GB",
    "united kingdom": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "germany": "DE",
    "deu": "DE",
    "deutschland": "DE",
    "france": "FR",
    "fra": "FR",
    "canada": "CA",
    "can": "CA",
    "australia": "AU",
    "aus": "AU",
    "india": "IN",
    "ind": "IN",
    "japan": "JP",
    "jpn": "JP",
    "china": "CN",
    "chn": "CN",
    "brazil": "BR",
    "brasil": "BR",
    "bra": "BR",
    "mexico": "MX",
    "méxico": "MX",
    "mex": "MX",
    "spain": "ES",
    "españa": "ES",
    "esp": "ES",
    "italy": "IT",
    "italia": "IT",
    "ita": "IT",
    "netherlands": "NL",
    "the netherlands": "NL",
    "holland": "NL",
    "nld": "NL",
    "switzerland": "CH",
    "che": "CH",
    "sweden": "SE",
    "swe": "SE",
    "norway": "NO",
    "denmark": "DK",
    "finland": "FI",
    "ireland": "IE",
    "irl": "IE",
    "israel": "IL",
    "singapore": "SG",
    "sgp": "SG",
    "south korea": "KR",
    "korea": "KR",
    "republic of korea": "KR",
    "new zealand": "NZ",
    "belgium": "BE",
    "austria": "AT",
    "poland": "PL",
    "portugal": "PT",
    "south africa": "ZA",
    "united arab emirates": "AE",
    "uae": "AE",
    "saudi arabia": "SA",
    "argentina": "AR",
    "chile": "CL",
    "colombia": "CO",
    "peru": "PE",
    "hong kong": "HK",
    "taiwan": "TW",
    "indonesia": "ID",
    "philippines": "PH",
    "thailand": "TH",
    "vietnam": "VN",
    "viet nam": "VN",
    "malaysia": "MY",
    "turkey": "TR",
    "türkiye": "TR",
    "turkiye": "TR",
    "czech republic": "CZ",
    "czechia": "CZ",
    "hungary": "HU",
    "romania": "RO",
    "greece": "GR",
    "egypt": "EG",
    "nigeria": "NG",
    "kenya": "KE",
    "luxembourg": "LU",
    "ukraine": "UA",
    "estonia": "EE",
    "latvia": "LV",
    "lithuania": "LT",
    "iceland": "IS",
    "croatia": "HR",
    "slovakia": "SK",
    "slovenia": "SI",
    "bulgaria": "BG",
    "serbia": "RS",
    "qatar": "QA",
    "pakistan": "PK",
    "bangladesh": "BD",
    "sri lanka": "LK",
    "morocco": "MA",
    "costa rica": "CR",
    "uruguay": "UY",
    "puerto rico": "PR",
}

# ISO 3166-1 alpha-2, all officially assigned codes.
_ISO_CODES = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV
    BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES
    ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE
    IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU
    NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM
    SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE
    VG VI VN VU WF WS YE YT ZA ZM ZW
"""
ISO_COUNTRIES = frozenset(_ISO_CODES.split())

# The standard Salesforce Opportunity stages and the Clazar stage ``suggest`` maps each to.
SALESFORCE_STAGES = {
    "Prospecting": "prospect",
    "Qualification": "qualified",
    "Needs Analysis": "qualified",
    "Value Proposition": "technical_validation",
    "Id. Decision Makers": "business_validation",
    "Perception Analysis": "business_validation",
    "Proposal/Price Quote": "committed",
    "Negotiation/Review": "committed",
    "Closed Won": "launched",
    "Closed Lost": "closed_lost",
}


# ---------------------------------------------------------------------------------------------------------
# Coercion to the target's kind


def _coerce(value: Any, target: Target, field_name: str) -> Any:
    """The value as the target takes it; _Fail("<value> is not ...") otherwise."""
    kind = target.kind
    if kind == "text":
        return _text(value, target, field_name)
    if kind == "choice":
        return _choice(value, target)
    if kind == "date":
        return _date_value(value)
    if kind == "number":
        return _number(value)
    if kind == "url":
        return _url(value)
    if kind == "country":
        return _country(value)
    raise _Fail(f"the target kind {kind!r} is unknown")  # pragma: no cover - TARGETS are fixed


def _text(value: Any, target: Target, field_name: str) -> str:
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, Decimal)) or (isinstance(value, float) and math.isfinite(value)):
        text = str(value)
    elif isinstance(value, date):
        text = value.isoformat()
    else:
        reason = f"is {_kind_of(value)}, not text"
        raise _Fail(f"the value {reason}; pick a field that holds text", reason)
    limit = target.max_length
    if limit is not None and len(text) > limit:
        reason = f"is {len(text):,} characters long; Clazar takes at most {limit:,}"
        example = f"{field_name or 'Name'}[:{limit}]"
        raise _Fail(f"the value {reason}: shorten it with an expression such as {example}", reason)
    return text


def _choice(value: Any, target: Target) -> str:
    text = _key(value)
    if text is not None:
        folded = " ".join(text.split()).casefold()
        if folded in target.choices:
            return folded
        if target.name == "cloud" and folded in _CLOUD_NAMES:
            return _CLOUD_NAMES[folded]
    reason = f"is not one of {', '.join(target.choices)}"
    raise _Fail(f"{_show(value)} {reason} — add it to the value map", reason)


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _parse_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if _ISO_DATE.fullmatch(text):
                return date.fromisoformat(text)
            if _ISO_DATE.match(text) and len(text) <= 40:
                return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
        except ValueError:
            return None
    return None


def _date_value(value: Any) -> str:
    found = _parse_date(value)
    if found is None:
        raise _bad(
            value, "is not a date", "use YYYY-MM-DD (e.g. 2027-01-31) or a Salesforce date or datetime"
        )
    return found.isoformat()


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")


def _number(value: Any) -> int | float:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) <= 100 and _NUMBER.fullmatch(text):
            if text.lstrip("+-").isdigit():
                return int(text)
            number = float(text)
            if math.isfinite(number):
                return number
    raise _bad(value, "is not a number", "use digits such as 1200 or 1200.50")


_LABEL = re.compile(r"[^\W_](?:[\w-]{0,61}[^\W_])?")


def _url(value: Any) -> str:
    bad = _bad(value, "is not a web address", "use a site such as acme.com or https://acme.com")
    if not isinstance(value, str):
        raise bad
    text = value.strip()
    if len(text) > MAX_URL or any(c.isspace() or not c.isprintable() or c == "\\" for c in text):
        raise bad
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise bad from None
    labels = (parts.hostname or "").split(".")
    if (
        parts.scheme.lower() not in ("http", "https")
        or "@" in parts.netloc
        or port == 0
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
    ):
        raise bad
    return text


def _country(value: Any) -> str:
    if isinstance(value, str):
        text = " ".join(value.replace(".", "").split()).casefold()
        code = _COUNTRY_NAMES.get(text)
        if code is None and text.startswith("the "):
            code = _COUNTRY_NAMES.get(text[4:])
        if code is None and text.upper() in ISO_COUNTRIES:
            code = text.upper()
        if code is not None:
            return code
    raise _bad(
        value,
        "is not a country",
        "use a 2-letter ISO code such as US or DE (or a common name such as United States), or add it to "
        "the value map",
    )


def _plain(value: Any) -> Any:
    """A custom property's value: JSON text, numbers, booleans, lists and objects; dates as ISO text."""
    if isinstance(value, str):
        value = value.strip()
        if len(value) > MAX_CUSTOM_SIZE:
            raise _Fail(f"the value is {len(value):,} characters; at most {MAX_CUSTOM_SIZE:,} are allowed")
        return value
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Fail(f"{_show(value)} is not a number JSON can carry")
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        size = 0
        try:
            for chunk in _JSON.iterencode(value):  # lazy: stops early on a huge (or shared) structure
                size += len(chunk)
                if size > MAX_CUSTOM_SIZE:
                    raise _Fail(f"the value is over {MAX_CUSTOM_SIZE:,} characters as JSON")
        except (TypeError, ValueError, RecursionError):
            raise _Fail(f"the value is {_kind_of(value)} that can't be written as JSON") from None
        return value
    raise _Fail(
        f"the value is {_kind_of(value)}; use text, a number, true/false, a date, a list or an object"
    )


def _not_json(value: Any) -> Any:
    raise TypeError(type(value).__name__)


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_not_json)
