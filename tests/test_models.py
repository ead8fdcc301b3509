import pytest
from django.db import IntegrityError, transaction

from flows import records
from flows.models import Delivery, DeliveryItem, Record, SalesforceConnection
from tests.factories import DestinationFactory, NexsetFactory

pytestmark = pytest.mark.django_db


def test_only_one_salesforce_connection_can_exist():
    SalesforceConnection.objects.create(
        environment="production", instance_url="https://a.my.salesforce.com", org_id="00D1"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        SalesforceConnection.objects.create(
            environment="sandbox", instance_url="https://b.my.salesforce.com", org_id="00D2"
        )


def test_records_get_consecutive_seqs_and_a_schema():
    nexset = NexsetFactory()
    records.append(nexset.pk, [{"name": "a", "price": 1}, {"name": "b", "price": 2.5, "note": None}])
    records.append(nexset.pk, [{"name": "c"}])
    nexset.refresh_from_db()
    assert list(Record.objects.filter(nexset=nexset).values_list("seq", flat=True)) == [1, 2, 3]
    assert nexset.record_count == 3
    assert nexset.schema["price"]["type"] == "number"
    assert nexset.schema["price"]["nullable"] is True
    assert nexset.schema["name"] == {"type": "string", "nullable": False, "example": "a", "count": 3}


def test_a_seq_cannot_repeat_within_a_nexset():
    nexset = NexsetFactory()
    Record.objects.create(nexset=nexset, seq=1, data={})
    with pytest.raises(IntegrityError), transaction.atomic():
        Record.objects.create(nexset=nexset, seq=1, data={})


def test_a_record_is_in_at_most_one_real_delivery_per_destination_but_any_number_of_tests():
    destination = DestinationFactory()
    record = Record.objects.create(nexset=destination.nexset, seq=1, data={})

    def deliver(is_test: bool) -> None:
        delivery = Delivery.objects.create(destination=destination, method="POST", url="/x/", is_test=is_test)
        DeliveryItem.objects.create(
            delivery=delivery, record=record, destination=destination, is_test=is_test
        )

    deliver(False)
    deliver(True)
    deliver(True)
    with pytest.raises(IntegrityError), transaction.atomic():
        deliver(False)
