"""Demo data: an Admin (login printed once), a credential pointing at the Clazar simulator, sample Nexsets
of listings, opportunities and private offers, and one draft destination. Safe to run again."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from flows import records, roles
from flows.models import Credential, Destination, Nexset, SalesforceApp

CREDENTIAL_NAME = "Clazar simulator (demo)"

CLOUDS = ("aws", "azure", "gcp")
COMPANIES = ("Acme Analytics", "Globex", "Initech", "Umbrella Health", "Stark Logistics", "Wayne Retail")


def listings() -> list[dict]:
    return [
        {"name": f"DataPipe {tier}", "cloud": cloud, "pricing_model": "contract", "short_description": desc}
        for tier, cloud, desc in [
            ("Standard", "aws", "Managed pipelines for mid-size teams"),
            ("Enterprise", "aws", "Pipelines with SSO and audit"),
            ("Standard", "azure", "Managed pipelines on Azure"),
            ("Enterprise", "gcp", "Pipelines with SSO on Google Cloud"),
        ]
    ]


def opportunities() -> list[dict]:
    rows = []
    for i, company in enumerate(COMPANIES):
        rows.append(
            {
                "title": f"{company} – DataPipe expansion",
                "cloud": CLOUDS[i % 3],
                "customer_company": company,
                "customer_website": f"https://www.{company.split()[0].lower()}.example",
                "stage": ("prospect", "qualified", "technical_validation")[i % 3],
                "target_close_date": f"2027-0{1 + i % 6}-15",
                "expected_revenue": 12000 + 2500 * i,
            }
        )
    return rows


def private_offers() -> list[dict]:
    rows = []
    for i in range(12):
        company = COMPANIES[i % len(COMPANIES)]
        rows.append(
            {
                "name": f"{company} annual contract {2027 + i // 6}",
                "listing": "prod-datapipe-enterprise",
                "cloud": "aws",
                "buyer": f"{123456789000 + i * 7919}",
                "price": f"{24000 + 1000 * i}.00",
                "currency": "USD",
                "duration_months": 12,
                "expires_on": "2027-03-31",
            }
        )
    return rows


class Command(BaseCommand):
    help = "Create demo data pointing at the Clazar simulator (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        if not settings.CLAZAR_SIMULATOR_URL:
            raise CommandError(
                "Set CLAZAR_SIMULATOR_URL (the demo's Clazar simulator) before seeding demo data."
            )
        with transaction.atomic():
            self._admin()
            credential = self._credential()
            offers = self._nexset("Demo private offers", private_offers())
            self._nexset("Demo listings", listings())
            self._nexset("Demo co-sell opportunities", opportunities())
            if settings.SALESFORCE_SIMULATOR_URL:
                self._salesforce_app()
            if not Destination.objects.filter(nexset=offers).exists():
                Destination.objects.create(
                    name="Create Private Offer – Demo private offers",
                    nexset=offers,
                    credential=credential,
                    config={"mode": "template", "template": "create_private_offer", "response_webhook": True},
                )
        self.stdout.write(self.style.SUCCESS("Demo data is ready."))

    def _admin(self) -> None:
        User = get_user_model()
        if User.objects.filter(username="admin").exists():
            self.stdout.write(
                "Demo admin 'admin' exists; its password was printed when it was created. "
                "Reset it with: manage.py changepassword admin"
            )
            return
        password = secrets.token_urlsafe(12)
        user = User.objects.create_user("admin", password=password)
        roles.set_role(user, roles.ADMIN)
        self.stdout.write(self.style.WARNING(f"Log in as:  admin / {password}   (shown only this once)"))

    def _credential(self) -> Credential:
        credential = Credential.objects.filter(name=CREDENTIAL_NAME).first()
        if credential is None:
            credential = Credential(name=CREDENTIAL_NAME, client_id=DEFAULT_CLIENT_ID)
            credential.client_secret = DEFAULT_CLIENT_SECRET  # the simulator's, not a real one
        credential.api_base = settings.CLAZAR_SIMULATOR_URL
        credential.save()
        return credential

    def _salesforce_app(self) -> None:
        """The connected app of the Salesforce simulator, so "Connect to Salesforce" works at once."""
        from clazar_dest.simulators.salesforce import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET

        if SalesforceApp.objects.exists():
            return
        app = SalesforceApp(consumer_key=DEFAULT_CONSUMER_KEY)
        app.consumer_secret = DEFAULT_CONSUMER_SECRET  # the simulator's, not a real one
        app.save()

    def _nexset(self, name: str, rows: list[dict]) -> Nexset:
        nexset, created = Nexset.objects.get_or_create(name=name, defaults={"kind": Nexset.Kind.UPLOAD})
        if created:
            records.append(nexset.pk, rows, [f"demo-{i}" for i in range(1, len(rows) + 1)])
            nexset.refresh_from_db()
        return nexset
