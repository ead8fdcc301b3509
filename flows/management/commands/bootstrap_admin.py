"""Create the first Admin (like createsuperuser, but in the Admin role). Password from
BOOTSTRAP_ADMIN_PASSWORD, or asked for."""

import getpass
import os

from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from flows import roles


class Command(BaseCommand):
    help = "Create an Admin user (the first one, or another)."

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", default="")

    def handle(self, *args: object, username: str, email: str, **options: object) -> None:
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            raise CommandError(f"A user named {username!r} already exists; use changepassword to reset it.")
        password = os.environ.get("BOOTSTRAP_ADMIN_PASSWORD") or ""
        if not password:
            if not os.isatty(0):
                raise CommandError("Set BOOTSTRAP_ADMIN_PASSWORD or run this command in a terminal.")
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("The passwords differ.")
        user = User(username=username, email=email)
        try:
            password_validation.validate_password(password, user)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        user.set_password(password)
        user.save()
        roles.set_role(user, roles.ADMIN)
        self.stdout.write(self.style.SUCCESS(f"Admin {username!r} created."))
