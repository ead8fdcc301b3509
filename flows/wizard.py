"""The destination wizard's form: every field of ``DestinationConfig`` as an ordinary Django form, so the
page works as a plain form POST and the HTMX preview posts the very same fields.

Both tabs (Template and Advanced) live in one form; the ``mode`` radio says which one counts, and the
other tab's fields are kept as typed until Done.
"""

from __future__ import annotations

from typing import Any

from django import forms

from clazar_dest.clazar.endpoints import ENDPOINTS
from flows.config import ALGORITHMS, DEFAULT_BATCH, MAX_BATCH, METHODS, Batching, DestinationConfig

# DestinationConfig.validate() keys -> form field names
ERROR_FIELDS = {
    "mode": "mode",
    "template": "template",
    "id_value": "id_value",
    "method": "method",
    "content_format": "content_format",
    "url": "url",
    "headers": "headers",
    "exclude": "exclude_other",
    "batching": "batch_enabled",
    "batching.enabled": "batch_enabled",
    "batching.size": "batch_size",
    "batching.algorithm": "batch_algorithm",
    "batching.property_name": "property_name",
    "batching.other_props": "other_props",
    "batching.code": "code",
}

CODE_EXAMPLE = '{\n  "records": [\n  {% for r in records %}{{ r|tojson }}{% if not loop.last %},{% endif %}\n  {% endfor %}]\n}'


class WizardForm(forms.Form):
    name = forms.CharField(max_length=150, required=False, label="Destination name")
    mode = forms.ChoiceField(
        choices=[("template", "Template"), ("advanced", "Advanced")], widget=forms.RadioSelect
    )
    template = forms.ChoiceField(label="Endpoint", required=False)
    id_value = forms.CharField(label="ID", required=False, max_length=500)
    method = forms.ChoiceField(choices=[(m, m) for m in METHODS], required=False)
    content_format = forms.ChoiceField(choices=[("json", "JSON")], required=False, label="Content format")
    url = forms.CharField(label="URL", required=False, max_length=2000)
    headers = forms.CharField(label="Request headers", required=False, max_length=8000)
    exclude = forms.MultipleChoiceField(
        label="Exclude attributes", required=False, widget=forms.CheckboxSelectMultiple
    )
    exclude_other = forms.CharField(label="Other attributes to exclude", required=False, max_length=2000)
    batch_enabled = forms.BooleanField(label="Would you like to batch your records together?", required=False)
    batch_size = forms.IntegerField(label="Batch size", required=False, min_value=1, max_value=MAX_BATCH)
    batch_algorithm = forms.ChoiceField(
        label="Grouping algorithm",
        required=False,
        choices=[("property", "Property inside JSON object"), ("code", "Code")],
        widget=forms.RadioSelect,
    )
    property_name = forms.CharField(label="Property name", required=False, max_length=100)
    other_props = forms.CharField(
        label="Other props (JSON)", required=False, widget=forms.Textarea(attrs={"rows": 3})
    )
    code = forms.CharField(label="Code", required=False, widget=forms.Textarea(attrs={"rows": 8}))
    response_webhook = forms.BooleanField(
        label="Would you like to process the API response as a webhook source?", required=False
    )

    def __init__(self, *args: Any, schema_fields: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["template"].choices = [("", "Choose an endpoint…")] + [
            (e.key, e.label) for e in ENDPOINTS
        ]
        chosen = list(self.initial.get("exclude", [])) if not self.is_bound else self.data.getlist("exclude")
        names = list(dict.fromkeys([*schema_fields, *chosen]))
        self.fields["exclude"].choices = [(n, n) for n in names]
        for name in ("id_value", "url", "headers", "exclude_other", "property_name"):
            self.fields[name].widget.attrs.update(autocomplete="off", spellcheck="false")

    def wire(self, preview_url: str) -> WizardForm:
        """Choosing an endpoint re-renders its fields (help, ID) as well as the samples: that select posts
        the form itself, named, and keeps its change event from the form's own preview trigger."""
        self.fields["template"].widget.attrs.update(
            {
                "hx-post": preview_url,
                "hx-trigger": "change consume",
                "hx-include": "#wizard",
                "hx-target": "#samples",
                "hx-indicator": "#samples-spinner",
            }
        )
        return self

    @classmethod
    def initial_from(cls, config: DestinationConfig, name: str, schema_fields: list[str]) -> dict[str, Any]:
        """Initial form values for a stored config; excluded names not in the schema go to 'other'."""
        in_schema = [n for n in config.exclude if n in schema_fields]
        other = [n for n in config.exclude if n not in schema_fields]
        batching = config.batching
        return {
            "name": name,
            "mode": config.mode,
            "template": config.template,
            "id_value": config.id_value,
            "method": config.method,
            "content_format": config.content_format,
            "url": config.url,
            "headers": config.headers,
            "exclude": in_schema,
            "exclude_other": ", ".join(other),
            "batch_enabled": batching.enabled,
            "batch_size": batching.size,
            "batch_algorithm": batching.algorithm,
            "property_name": batching.property_name,
            "other_props": batching.other_props,
            "code": batching.code or CODE_EXAMPLE,
            "response_webhook": config.response_webhook,
        }

    def to_config(self) -> DestinationConfig:
        """The config these (already cleaned) values describe."""
        data = self.cleaned_data
        other = [p.strip() for p in (data.get("exclude_other") or "").split(",") if p.strip()]
        exclude = tuple(dict.fromkeys([*data.get("exclude", []), *other]))
        algorithm = data.get("batch_algorithm") or "property"
        return DestinationConfig(
            mode=data.get("mode") or "template",
            template=data.get("template") or "",
            id_value=(data.get("id_value") or "").strip(),
            method=data.get("method") or "POST",
            content_format=data.get("content_format") or "json",
            url=(data.get("url") or "").strip(),
            headers=(data.get("headers") or "").strip(),
            exclude=exclude,
            batching=Batching(
                enabled=bool(data.get("batch_enabled")),
                size=data.get("batch_size") or DEFAULT_BATCH,
                algorithm=algorithm if algorithm in ALGORITHMS else "property",
                property_name=(data.get("property_name") or "records").strip(),
                other_props=data.get("other_props") or "",
                code=data.get("code") or "",
            ),
            response_webhook=bool(data.get("response_webhook")),
        )

    def check(self, api_base: str) -> DestinationConfig | None:
        """Validate the form and the config; put the config's messages on the matching fields.
        Idempotent: a second call returns the first answer."""
        if not hasattr(self, "_checked"):
            self._checked = self._check(api_base)
        return self._checked

    def _check(self, api_base: str) -> DestinationConfig | None:
        if not self.is_valid():
            return None
        config = self.to_config()
        for key, messages in config.validate(api_base).items():
            field = ERROR_FIELDS.get(key, key.split(".")[-1])
            for message in messages:
                self.add_error(field if field in self.fields else None, message)
        return None if self.errors else config
