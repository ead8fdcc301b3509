from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from flows.models import Credential


class CredentialForm(forms.ModelForm):
    """Name, API base, client id and a write-only client secret (blank on edit keeps the stored one)."""

    client_secret = forms.CharField(
        label="Client secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    api_base = forms.ChoiceField(label="API base")

    class Meta:
        model = Credential
        fields = ["name", "api_base", "client_id", "rate_limit"]
        labels = {"client_id": "Client ID", "rate_limit": "Rate limit (requests per minute)"}
        widgets = {"client_id": forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"})}

    field_order = ["name", "api_base", "client_id", "client_secret", "rate_limit"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        bases = list(settings.CLAZAR_API_BASES)
        if self.instance.pk and self.instance.api_base not in bases:
            bases.append(self.instance.api_base)  # shown so it can be changed, rejected if kept
        self.fields["api_base"].choices = [
            (b, f"{b} (simulator)" if b == settings.CLAZAR_SIMULATOR_URL else b) for b in bases
        ]
        self.fields["rate_limit"].widget.attrs.update(min=1, max=100_000)
        if self.instance.pk:
            self.fields[
                "client_secret"
            ].help_text = "Stored encrypted and never shown. Leave blank to keep it."
        else:
            self.fields["client_secret"].required = True
            self.fields["client_secret"].help_text = "Stored encrypted; it cannot be viewed after saving."
            self.fields["rate_limit"].initial = settings.CLAZAR_RATE_LIMIT

    def clean_api_base(self) -> str:
        base = self.cleaned_data["api_base"]
        if base not in settings.CLAZAR_API_BASES:
            raise forms.ValidationError(
                f"{base} is not an allowed Clazar API base. Allowed: {', '.join(settings.CLAZAR_API_BASES)}."
            )
        return base

    def clean_client_secret(self) -> str:
        secret = self.cleaned_data.get("client_secret", "")
        if any(ch in secret for ch in "\r\n\x00"):
            raise forms.ValidationError("The client secret contains a line break or NUL character.")
        return secret

    def save(self, commit: bool = True) -> Credential:
        credential = super().save(commit=False)
        secret = self.cleaned_data.get("client_secret")
        if secret:
            credential.client_secret = secret
        if secret or {"client_id", "api_base"} & set(self.changed_data):
            # A new identity: forget the cached token and the old verdict.
            credential.access_token = None
            credential.token_expires_at = None
            credential.status = Credential.Status.UNVERIFIED
            credential.last_error = ""
        if commit:
            credential.save()
        return credential
