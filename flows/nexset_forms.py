"""Forms of the Nexset pages: upload a file, create a webhook, confirm a deletion, search records."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from django import forms
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from flows.ingest.errors import IngestError
from flows.ingest.sniff import HEAD_BYTES, Sniffed, sniff
from flows.models import Nexset


class UploadForm(forms.Form):
    """A file for a new Nexset or for an existing upload Nexset. The first megabyte is checked here, so an
    empty, binary or header-less file is refused at once; the worker reads the rest."""

    nexset = forms.ModelChoiceField(
        label="Into",
        queryset=Nexset.objects.filter(kind=Nexset.Kind.UPLOAD),
        required=False,
        empty_label="A new Nexset",
        to_field_name="uuid",
    )
    name = forms.CharField(
        label="Name of the new Nexset",
        max_length=150,
        required=False,
        help_text="Leave empty to use the file name.",
    )
    text = forms.BooleanField(
        label="Keep every value as text",
        required=False,
        help_text="CSV only: no numbers, true/false or nulls are inferred; empty cells stay empty strings.",
    )
    partial_ok = forms.BooleanField(
        label="Import the good rows and list the rejected ones",
        required=False,
        help_text="Otherwise a file with any bad row is refused whole, and nothing is stored.",
    )
    file = forms.FileField(
        label="File",
        allow_empty_file=True,  # sniff() says "The file is empty."
        help_text="CSV (comma, semicolon or tab), JSON array of objects, or NDJSON.",
    )

    def __init__(self, *args: Any, too_large: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.too_large = too_large
        if too_large:
            self.fields["file"].required = False  # the handler dropped it; clean() says why
        self.sniffed: Sniffed | None = None
        limit = filesizeformat(settings.UPLOAD_MAX_BYTES)
        self.fields["file"].help_text += f" Up to {limit}."
        self.fields["file"].widget.attrs.update(accept=".csv,.tsv,.txt,.json,.ndjson,.jsonl")

    def clean_file(self) -> Any:
        upload = self.cleaned_data.get("file")
        if upload is None:
            return upload
        upload.seek(0)
        head = upload.read(HEAD_BYTES + 1)
        upload.seek(0)
        try:
            self.sniffed = sniff(head[:HEAD_BYTES], upload.name or "", complete=len(head) <= HEAD_BYTES)
        except IngestError as exc:
            raise forms.ValidationError(f"{upload.name}: {exc}") from None
        return upload

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.too_large:
            self.add_error(
                "file",
                f"The file is larger than {filesizeformat(settings.UPLOAD_MAX_BYTES)}, the limit "
                "(UPLOAD_MAX_BYTES). Split it, or ask an administrator to raise the limit.",
            )
        if not data.get("nexset") and not data.get("name") and data.get("file"):
            data["name"] = PurePath(data["file"].name or "Upload").stem[:150] or "Upload"
        return data


class WebhookForm(forms.Form):
    name = forms.CharField(label="Name", max_length=150, help_text="What the sending system calls this feed.")


class DeleteForm(forms.Form):
    confirm = forms.CharField(label="Type the Nexset's name to confirm", max_length=150)

    def __init__(self, *args: Any, nexset: Nexset, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nexset = nexset

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"]
        if value.strip() != self.nexset.name.strip():
            raise forms.ValidationError(f"Type “{self.nexset.name}” exactly to delete it.")
        return value
