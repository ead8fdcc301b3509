from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from flows import roles
from flows.models import Credential, Destination, Nexset

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def role(self, create: bool, extracted: str | None, **kwargs: object) -> None:
        self.save()
        if extracted:
            roles.set_role(self, extracted)


class CredentialFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Credential

    name = factory.Sequence(lambda n: f"Clazar account {n}")
    api_base = "https://api.clazar.io"
    client_id = factory.Sequence(lambda n: f"client-{n}")
    client_secret = "s3cret-value"


class NexsetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Nexset

    name = factory.Sequence(lambda n: f"Nexset {n}")
    kind = Nexset.Kind.UPLOAD


class DestinationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Destination

    name = factory.Sequence(lambda n: f"Destination {n}")
    nexset = factory.SubFactory(NexsetFactory)
    credential = factory.SubFactory(CredentialFactory)
    config = factory.LazyFunction(lambda: {"mode": "template", "template": "create_private_offer"})
