"""Record search indexes per large Nexset on PostgreSQL (flows/search_index.py): the first record search in
a large Nexset's history has a worker build one; later searches use it with the same results; deleting the
Nexset drops it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.db import connection
from django.urls import reverse

from flows import history, nexsets, records, search_index, tasks
from tests.deliveries import DeliveryFactory
from tests.factories import DestinationFactory, NexsetFactory
from tests.test_history import shown

pytestmark = pytest.mark.django_db(transaction=True)
HINT = "An index for record searches in it is being built"


@pytest.fixture
def postgres(monkeypatch) -> Iterator[None]:
    """PostgreSQL only; the worker's tasks run at once (as a worker would, after the commit); the indexes
    made are dropped afterwards."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: on SQLite a record search reads the records")
    for task in (tasks.build_search_index, tasks.drop_search_index):
        monkeypatch.setattr(task, "delay", task)
    yield
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'record\\_search\\_%%' AND relkind = 'i'"
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f'DROP INDEX IF EXISTS "{name}"')


def big_destination(count: int):
    destination = DestinationFactory(nexset=NexsetFactory(name="Big"), status="active")
    cache.delete(f"record-search-index-{destination.nexset_id}")
    made = [
        DeliveryFactory(destination=destination, data={"name": f"N{i}", "buyer": f"{i:012d}"})
        for i in range(count)
    ]
    return destination, made


def uses_index(destination) -> bool:
    """Whether PostgreSQL answers the record search with the Nexset's index (over enough records that the
    planner would rather not read them all)."""
    if destination.nexset.record_count < 2000:
        filler = [{"name": "filler", "buyer": f"9{i:011d}"} for i in range(3000)]
        records.append(destination.nexset_id, filler)
        destination.nexset.refresh_from_db()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE flows_record")
    plan = history._records_with(destination, "buyer", ["000000000002"]).explain()
    return search_index.name(destination.nexset_id) in plan


def test_a_search_in_a_large_nexset_builds_its_index_and_later_searches_use_it(
    postgres, viewer_client, settings
):
    settings.RECORD_SEARCH_INDEX_MIN = 3
    destination, made = big_destination(4)
    url = reverse("destination_history", args=[destination.uuid])
    assert not uses_index(destination)
    first = viewer_client.get(url, {"record": "buyer=000000000002"}).content.decode()
    assert shown(first) == [str(made[2].uuid)]
    assert HINT in first  # this search read the records; the index was built after it
    assert search_index.state(destination.nexset_id) == search_index.READY
    assert uses_index(destination)
    again = viewer_client.get(url, {"record": "buyer=000000000002"}).content.decode()
    assert shown(again) == [str(made[2].uuid)] and HINT not in again


def test_a_small_nexset_gets_no_index(postgres, viewer_client, settings):
    settings.RECORD_SEARCH_INDEX_MIN = 10
    destination, made = big_destination(4)
    page = viewer_client.get(
        reverse("destination_history", args=[destination.uuid]), {"record": "buyer=000000000001"}
    ).content.decode()
    assert shown(page) == [str(made[1].uuid)] and HINT not in page
    assert search_index.state(destination.nexset_id) is None


def test_deleting_a_nexset_drops_its_index(postgres, settings):
    nexset = NexsetFactory(name="Gone")
    assert search_index.build(nexset.pk)
    assert search_index.state(nexset.pk) == search_index.READY
    nexsets.delete(nexset)
    assert search_index.state(nexset.pk) is None


def test_activating_a_destination_of_a_large_nexset_builds_its_index(postgres, settings):
    settings.RECORD_SEARCH_INDEX_MIN = 3
    from flows import activation
    from tests.factories import CredentialFactory

    nexset = NexsetFactory(name="Large")
    records.append(nexset.pk, [{"name": f"N{i}", "buyer": f"{i:012d}"} for i in range(4)])
    cache.delete(f"record-search-index-{nexset.pk}")
    destination = DestinationFactory(nexset=nexset, credential=CredentialFactory(), status="draft")
    assert search_index.state(nexset.pk) is None
    activation.activate(destination.pk, user=None)
    assert search_index.state(nexset.pk) == search_index.READY
