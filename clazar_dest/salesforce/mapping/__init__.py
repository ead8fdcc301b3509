"""Salesforce records -> Clazar co-sell opportunity records, as an operator maps them on a page.

Pure: no Django, no ORM, no network and no clock (``today`` is passed in). The steps:

1. ``Mapping.from_json`` reads what the page saved and says everything that is wrong (``MappingInvalid``),
   keyed by target name ("title", "custom_properties.region"; "" for the mapping as a whole).
   ``to_json`` writes it back with every key present, so the round trip is exact.
2. ``compile_mapping`` checks the same things and compiles each expression once; ``Compiled.apply`` turns
   one record into a ``Result`` (the Clazar record plus field errors) and never raises for a bad record.
   A record with errors is reported and must not be sent; deciding that is the caller's job.
3. ``source_fields`` lists the Salesforce fields the mapping reads (for the SELECT); ``suggest`` drafts a
   mapping from Opportunity's describe data; ``preview`` maps a few records for the page.

How a target gets its value:

- The rule's source gives a value: a Salesforce field (dotted paths walk parent records, ``Account.Name``;
  a name matches exactly, else case-insensitively, as SOQL does), a constant, or an expression.
- A value that is not empty goes through the rule's value map: the exact key first, then one that matches
  ignoring case and surrounding spaces; with no entry, ``values_default`` (None: keep the value). Map a
  value to "" to treat it as empty.
- Empty (None, "", spaces only, [] or {}) -> the fallback rule (with its own value map, no fallback).
- Still empty: an error when the target is required or the rule has a fallback (the operator asked for a
  value); otherwise the target is left out of the record.
- The value is coerced to the target's kind (see ``TARGETS``); what can't be is an error saying what was
  expected. Custom properties take any JSON value (dates become ISO text) and go under "custom_properties".

Expressions are Jinja2 expressions (not templates) in the immutable sandbox. Variables: the record's fields
(``Amount``, ``Account.Name``; a missing or null field is empty: falsy, "" in filters, an error in
arithmetic), ``today`` and ``now`` (given to ``apply``), ``days(n)`` (a timedelta) and ``date(x)`` (a
Salesforce date or datetime as a date). Filters: lower, upper, trim, title, replace, default (d), round,
int, float. "today + 15 days" is shorthand for ``today + days(15)``. Limits: 500 characters, no names
starting with "_", no string formatting or padding, and no value longer than ``MAX_RESULT`` characters.

The package: ``values`` (helpers on Salesforce values), ``targets`` (the Clazar fields and coercion to their
kinds), ``expressions`` (the sandbox), ``rules`` (Rule, Mapping, their JSON and the checks), ``apply``
(compiling and applying) and ``suggest``. Import from the package: the names below are its API.
"""

from clazar_dest.salesforce.mapping.apply import (
    Compiled,
    FieldError,
    Result,
    compile_mapping,
    preview,
    source_fields,
)
from clazar_dest.salesforce.mapping.expressions import _ENV, HELPERS, MAX_DAYS, MAX_RESULT
from clazar_dest.salesforce.mapping.rules import (
    CUSTOM_NAME,
    MAX_CONSTANT,
    MAX_CUSTOM,
    MAX_EXPRESSION,
    MAX_VALUE_TEXT,
    MAX_VALUES,
    SOURCES,
    Mapping,
    MappingInvalid,
    Rule,
)
from clazar_dest.salesforce.mapping.suggest import suggest
from clazar_dest.salesforce.mapping.targets import (
    BY_NAME,
    ISO_COUNTRIES,
    KINDS,
    MAX_CUSTOM_SIZE,
    MAX_URL,
    SALESFORCE_STAGES,
    STAGES,
    TARGETS,
    Target,
)

__all__ = [
    "BY_NAME",
    "CUSTOM_NAME",
    "HELPERS",
    "ISO_COUNTRIES",
    "KINDS",
    "MAX_CONSTANT",
    "MAX_CUSTOM",
    "MAX_CUSTOM_SIZE",
    "MAX_DAYS",
    "MAX_EXPRESSION",
    "MAX_RESULT",
    "MAX_URL",
    "MAX_VALUES",
    "MAX_VALUE_TEXT",
    "SALESFORCE_STAGES",
    "SOURCES",
    "STAGES",
    "TARGETS",
    "_ENV",  # the expression environment (tests count its compiles)
    "Compiled",
    "FieldError",
    "Mapping",
    "MappingInvalid",
    "Result",
    "Rule",
    "Target",
    "compile_mapping",
    "preview",
    "source_fields",
    "suggest",
]
