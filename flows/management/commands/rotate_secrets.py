"""Re-encrypt every stored secret with the first key of FIELD_ENCRYPTION_KEYS.

Rotation: put a new key first in FIELD_ENCRYPTION_KEYS (keep the old ones after it), run this command,
then remove the old keys. It runs in one transaction: a secret no key can read stops it with nothing changed.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from flows.secrets import DecryptionError, encrypted_fields


class Command(BaseCommand):
    help = "Re-encrypt every secret with the first key in FIELD_ENCRYPTION_KEYS."

    def handle(self, *args: object, **options: object) -> None:
        total = 0
        try:
            with transaction.atomic():
                for model, names in encrypted_fields():
                    # Few rows hold secrets (credentials, connections, webhook Nexsets): read them whole.
                    for obj in list(model.objects.only("pk", *names)):
                        values = {name: getattr(obj, name) for name in names if getattr(obj, name)}
                        if values:
                            # Saving a decrypted value encrypts it again with the first key.
                            model.objects.filter(pk=obj.pk).update(**values)
                            total += len(values)
        except DecryptionError as exc:
            raise CommandError(f"{exc} Nothing was changed.") from None
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted {total} secret(s) with the first key."))
