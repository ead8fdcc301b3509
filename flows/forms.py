from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model, password_validation

from flows import roles
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
        self.fields["rate_limit"].widget.attrs.update(min=1, max=1_000_000)
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


ROLE_CHOICES = [("", "No role (cannot see anything)")] + [(r, r) for r in roles.ROLES]


class UserCreateForm(forms.ModelForm):
    """A new user with a role and an initial password (validated like any password)."""

    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=roles.VIEWER, required=False)
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 10 characters; not a common or all-numeric password. Tell the user over a safe channel.",
    )

    class Meta:
        model = get_user_model()
        fields = ["username", "email"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        password = data.get("password")
        if password:
            user = get_user_model()(username=data.get("username", ""), email=data.get("email", ""))
            try:
                password_validation.validate_password(password, user)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return data

    def save(self, commit: bool = True) -> Any:
        user = super().save(commit=False)
        user.set_password(self.cleaned_data["password"])
        user.save()
        roles.set_role(user, self.cleaned_data["role"] or None)
        return user


class UserEditForm(forms.ModelForm):
    """Role and active flag. Admins cannot lock themselves out, and the last Admin stays an Admin."""

    role = forms.ChoiceField(choices=ROLE_CHOICES, required=False)
    new_password = forms.CharField(
        required=False,
        label="Set a new password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Leave blank to keep the current password.",
    )

    class Meta:
        model = get_user_model()
        fields = ["email", "is_active"]
        labels = {"is_active": "Active (can log in)"}

    def __init__(self, *args: Any, acting: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acting = acting
        self.fields["role"].initial = roles.role_of(self.instance) or ""

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        demoted = (data.get("role") or None) != roles.ADMIN or not data.get("is_active")
        was_admin = roles.role_of(self.instance) == roles.ADMIN
        if was_admin and demoted:
            if self.instance.pk == self.acting.pk:
                raise forms.ValidationError("You cannot remove your own Admin role or deactivate yourself.")
            others = [
                u
                for u in get_user_model().objects.filter(is_active=True).exclude(pk=self.instance.pk)
                if roles.role_of(u) == roles.ADMIN
            ]
            if not others:
                raise forms.ValidationError(
                    "This is the last active Admin: make someone else an Admin first."
                )
        password = data.get("new_password")
        if password:
            try:
                password_validation.validate_password(password, self.instance)
            except forms.ValidationError as exc:
                self.add_error("new_password", exc)
        return data

    def save(self, commit: bool = True) -> Any:
        user = super().save(commit=False)
        if self.cleaned_data.get("new_password"):
            user.set_password(self.cleaned_data["new_password"])
        user.save()
        roles.set_role(user, self.cleaned_data.get("role") or None)
        return user
