"""Forms of the Salesforce page."""

from __future__ import annotations

from typing import Any

from django import forms

from flows.models import SalesforceApp


class AppForm(forms.ModelForm):
    """Consumer key, a write-only consumer secret (blank on edit keeps the stored one), environment."""

    consumer_secret = forms.CharField(
        label="Consumer secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    class Meta:
        model = SalesforceApp
        fields = ["consumer_key", "environment"]
        labels = {"consumer_key": "Consumer key", "environment": "Environment"}
        widgets = {"consumer_key": forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"})}
        help_texts = {
            "environment": "Production and Developer Edition orgs sign in at login.salesforce.com, "
            "sandboxes at test.salesforce.com."
        }

    field_order = ["consumer_key", "consumer_secret", "environment"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.consumer_secret:
            self.fields["consumer_secret"].help_text = "Stored encrypted. Leave blank to keep it."
        else:
            self.fields["consumer_secret"].required = True
            self.fields["consumer_secret"].help_text = "Stored encrypted; it cannot be viewed after saving."

    def save(self, commit: bool = True) -> SalesforceApp:
        row = super().save(commit=False)
        if self.cleaned_data.get("consumer_secret"):
            row.consumer_secret = self.cleaned_data["consumer_secret"]
        if commit:
            row.save()
        return row
