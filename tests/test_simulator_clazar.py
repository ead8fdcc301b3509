"""Contract tests of the Clazar simulator over a real socket (no database, no Django needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from clazar_dest.clazar import endpoints
from clazar_dest.simulators.clazar import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, ClazarSimulator

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 5
LISTING = {"name": "Data Platform", "cloud": "aws"}
OPPORTUNITY = {"title": "Acme expansion", "cloud": "gcp", "customer_company": "Acme"}


def token(sim: ClazarSimulator) -> str:
    answer = requests.post(
        f"{sim.url}/authenticate/",
        json={"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200
    return answer.json()["access_token"]


def call(
    sim: ClazarSimulator, method: str, path: str, bearer: str | None = None, **kwargs
) -> requests.Response:
    headers = kwargs.pop("headers", {})
    headers.setdefault("Authorization", f"Bearer {bearer or token(sim)}")
    kwargs.setdefault("timeout", TIMEOUT)
    return requests.request(method, f"{sim.url}{path}", headers=headers, **kwargs)


def offer(sim: ClazarSimulator, **fields) -> dict:
    listing = sim.seed(listings=[LISTING])["listings"][0]
    return sim.seed(
        private_offers=[{"name": "Acme 3y", "listing": listing["id"], "buyer": "1234", **fields}]
    )["private_offers"][0]


# -- the endpoint catalog ------------------------------------------------------------------------


def test_the_catalog_lists_the_eight_templates_in_order():
    assert [e.key for e in endpoints.ENDPOINTS] == [
        "create_listing",
        "update_listing",
        "create_opportunity",
        "update_opportunity",
        "create_private_offer",
        "update_private_offer",
        "publish_private_offer",
        "delete_private_offer",
    ]
    assert [e.key for e in endpoints.ENDPOINTS if e.irreversible] == [
        "publish_private_offer",
        "delete_private_offer",
    ]
    assert [e.key for e in endpoints.ENDPOINTS if not e.has_body] == ["delete_private_offer"]
    assert all(e.lookup for e in endpoints.ENDPOINTS if e.creates)


def test_the_catalog_fills_and_encodes_the_id_parameter():
    endpoint = endpoints.get("publish_private_offer")
    assert endpoint.path_for("a b/c") == "/private_offers/a%20b%2Fc/publish/"
    assert endpoints.get("create_listing").path_for() == "/listings/"
    with pytest.raises(ValueError, match="Private Offer ID"):
        endpoint.path_for("")


def test_the_catalog_names_the_known_keys_for_an_unknown_one():
    with pytest.raises(KeyError, match="create_listing"):
        endpoints.get("nope")


# -- authentication ------------------------------------------------------------------------------


def test_it_issues_a_bearer_token_for_valid_client_credentials(clazar_sim):
    body = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    answer = requests.post(f"{clazar_sim.url}/authenticate/", json=body, timeout=TIMEOUT)
    assert answer.status_code == 200
    data = answer.json()
    assert data["token_type"] == "bearer"
    assert data["expires_in"] == 3600
    assert call(clazar_sim, "GET", "/listings/", bearer=data["access_token"]).status_code == 200


def test_it_rejects_wrong_client_credentials_with_401(clazar_sim):
    body = {"client_id": DEFAULT_CLIENT_ID, "client_secret": "wrong"}
    answer = requests.post(f"{clazar_sim.url}/authenticate/", json=body, timeout=TIMEOUT)
    assert answer.status_code == 401
    assert answer.json() == {"detail": "Invalid client credentials."}


def test_it_rejects_malformed_or_incomplete_authenticate_bodies_with_400(clazar_sim):
    url = f"{clazar_sim.url}/authenticate/"
    broken = requests.post(url, data=b"{nope", headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert broken.status_code == 400
    missing = requests.post(url, json={"client_id": DEFAULT_CLIENT_ID}, timeout=TIMEOUT)
    assert missing.status_code == 400
    assert missing.json() == {"client_secret": ["This field is required."]}


def test_it_accepts_an_added_client(clazar_sim):
    clazar_sim.add_client("second", "s3cret")
    body = {"client_id": "second", "client_secret": "s3cret"}
    assert requests.post(f"{clazar_sim.url}/authenticate/", json=body, timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("path", ["/listings/", "/opportunities/", "/private_offers/", "/listings/x/"])
def test_it_requires_a_bearer_token_on_api_routes(clazar_sim, path):
    missing = requests.get(f"{clazar_sim.url}{path}", timeout=TIMEOUT)
    assert missing.status_code == 401
    assert missing.json() == {"detail": "Authentication credentials were not provided."}
    assert "Bearer" in missing.headers["WWW-Authenticate"]
    unknown = call(clazar_sim, "GET", path, bearer="not-a-token")
    assert unknown.status_code == 401
    assert unknown.json() == {"detail": "Invalid token."}


def test_it_rejects_a_token_after_expires_in_seconds(clazar_sim):
    clazar_sim.configure(expires_in=0.3)
    bearer = token(clazar_sim)
    assert call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code == 200
    time.sleep(0.4)
    expired = call(clazar_sim, "GET", "/listings/", bearer=bearer)
    assert expired.status_code == 401
    assert expired.json() == {"detail": "Token has expired."}


# -- reads ---------------------------------------------------------------------------------------


def test_it_paginates_lists_with_absolute_next_and_previous_links(clazar_sim):
    clazar_sim.seed(listings=[{"name": f"L{i}", "cloud": "aws"} for i in range(25)])
    bearer = token(clazar_sim)
    first = call(clazar_sim, "GET", "/listings/", bearer=bearer).json()
    assert first["count"] == 25
    assert [o["name"] for o in first["results"]] == [f"L{i}" for i in range(10)]
    assert first["previous"] is None
    assert first["next"] == f"{clazar_sim.url}/listings/?page=2"
    second = requests.get(
        first["next"], headers={"Authorization": f"Bearer {bearer}"}, timeout=TIMEOUT
    ).json()
    assert second["previous"] == f"{clazar_sim.url}/listings/"
    last = call(clazar_sim, "GET", "/listings/?page=3&page_size=10", bearer=bearer).json()
    assert [o["name"] for o in last["results"]] == [f"L{i}" for i in range(20, 25)]
    assert last["next"] is None
    assert last["previous"] == f"{clazar_sim.url}/listings/?page_size=10&page=2"


def test_it_caps_page_size_at_100_and_answers_404_past_the_last_page(clazar_sim):
    clazar_sim.seed(opportunities=[dict(OPPORTUNITY, title=f"O{i}") for i in range(105)])
    bearer = token(clazar_sim)
    page = call(clazar_sim, "GET", "/opportunities/?page_size=500", bearer=bearer).json()
    assert len(page["results"]) == 100
    beyond = call(clazar_sim, "GET", "/opportunities/?page=99", bearer=bearer)
    assert beyond.status_code == 404
    assert beyond.json() == {"detail": "Invalid page."}


def test_it_filters_lists_by_last_modified_at_after(clazar_sim):
    base = datetime(2025, 1, 1, tzinfo=UTC)
    clazar_sim.seed(
        listings=[
            dict(LISTING, name=f"L{i}", last_modified_at=(base + timedelta(days=i)).isoformat())
            for i in range(5)
        ]
    )
    after = (base + timedelta(days=3)).isoformat()
    answer = call(clazar_sim, "GET", "/listings/", params={"last_modified_at_after": after})
    assert [o["name"] for o in answer.json()["results"]] == ["L3", "L4"]
    bad = call(clazar_sim, "GET", "/listings/", params={"last_modified_at_after": "yesterday"})
    assert bad.status_code == 400
    assert bad.json() == {"last_modified_at_after": ["Enter a valid date/time."]}


def test_it_filters_lists_by_the_catalog_lookup_parameter(clazar_sim):
    clazar_sim.seed(listings=[dict(LISTING, name="A"), dict(LISTING, name="B")])
    lookup = endpoints.get("create_listing").lookup
    answer = call(clazar_sim, "GET", lookup.path, params={lookup.param: "B"}).json()
    assert [o["name"] for o in answer["results"]] == ["B"]


def test_it_reads_one_object_and_answers_404_for_an_unknown_id(clazar_sim):
    listing = clazar_sim.seed(listings=[LISTING])["listings"][0]
    bearer = token(clazar_sim)
    assert call(clazar_sim, "GET", f"/listings/{listing['id']}/", bearer=bearer).json() == listing
    missing = call(clazar_sim, "GET", "/listings/nope/", bearer=bearer)
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not found."}


def test_it_answers_404_for_unknown_paths_and_405_for_wrong_methods(clazar_sim):
    assert call(clazar_sim, "GET", "/nothing/").status_code == 404
    wrong = call(clazar_sim, "GET", "/metering/")
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "POST"


# -- the template routes -------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", endpoints.ENDPOINTS, ids=lambda e: e.key)
def test_each_template_route_succeeds(clazar_sim, endpoint):
    target = offer(clazar_sim)
    ids = {
        "listings": target["listing"],
        "opportunities": clazar_sim.seed(opportunities=[OPPORTUNITY])["opportunities"][0]["id"],
        "private_offers": target["id"],
    }
    bodies = {"listings": LISTING, "opportunities": OPPORTUNITY, "private_offers": target}
    body = {k: v for k, v in bodies[endpoint.resource].items() if k not in endpoints.READ_ONLY_FIELDS}
    path = endpoint.path_for(ids[endpoint.resource] if endpoint.id_param else None)
    answer = call(clazar_sim, endpoint.method, path, json=body if endpoint.has_body else None)
    expected = {"create": 201, "update": 200, "publish": 200, "delete": 204}[endpoint.action]
    assert answer.status_code == expected, answer.text
    if endpoint.creates:
        data = answer.json()
        assert len(data["id"]) == 36
        assert data["created_at"] == data["last_modified_at"]
        assert {o["id"] for o in clazar_sim.objects(endpoint.resource)} >= {data["id"]}


INVALID = {
    "create_listing": ({}, {"name": ["This field is required."], "cloud": ["This field is required."]}),
    "update_listing": ({"cloud": "ibm"}, {"cloud": ['"ibm" is not a valid choice.']}),
    "create_opportunity": ({"title": "T", "cloud": "aws"}, {"customer_company": ["This field is required."]}),
    "update_opportunity": ({"title": None}, {"title": ["This field may not be null."]}),
    "create_private_offer": ({"name": "", "listing": "x"}, {"name": ["This field may not be blank."]}),
    "update_private_offer": ({"buyer": ""}, {"buyer": ["This field may not be blank."]}),
    "publish_private_offer": (
        [],
        {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]},
    ),
}


@pytest.mark.parametrize("endpoint", endpoints.ENDPOINTS, ids=lambda e: e.key)
def test_each_template_route_rejects_bad_input(clazar_sim, endpoint):
    target = offer(clazar_sim)
    ids = {
        "listings": target["listing"],
        "opportunities": clazar_sim.seed(opportunities=[OPPORTUNITY])["opportunities"][0]["id"],
        "private_offers": target["id"],
    }
    if endpoint.key == "delete_private_offer":
        answer = call(clazar_sim, "DELETE", endpoint.path_for("no-such-offer"))
        assert answer.status_code == 404
        return
    body, errors = INVALID[endpoint.key]
    path = endpoint.path_for(ids[endpoint.resource] if endpoint.id_param else None)
    answer = call(clazar_sim, endpoint.method, path, json=body)
    assert answer.status_code == 400
    for name, messages in errors.items():
        assert answer.json()[name] == messages


def test_it_creates_private_offers_as_drafts_and_publishes_them_once(clazar_sim):
    bearer = token(clazar_sim)
    listing = call(clazar_sim, "POST", "/listings/", bearer=bearer, json=LISTING).json()
    body = {"name": "Acme 3y", "listing": listing["id"], "buyer": "123456789012"}
    created = call(clazar_sim, "POST", "/private_offers/", bearer=bearer, json=body).json()
    assert created["status"] == "draft"
    publish = endpoints.get("publish_private_offer").path_for(created["id"])
    first = call(clazar_sim, "POST", publish, bearer=bearer, json={})
    assert first.status_code == 200
    assert first.json()["status"] == "published"
    again = call(clazar_sim, "POST", publish, bearer=bearer, json={})
    assert again.status_code == 400
    assert again.json() == {"detail": "Only draft offers can be published."}
    update = call(clazar_sim, "PUT", f"/private_offers/{created['id']}/", bearer=bearer, json={"name": "x"})
    assert update.status_code == 400


def test_deleting_an_offer_twice_answers_204_then_404(clazar_sim):
    target = offer(clazar_sim)
    bearer = token(clazar_sim)
    path = endpoints.get("delete_private_offer").path_for(target["id"])
    first = call(clazar_sim, "DELETE", path, bearer=bearer)
    assert first.status_code == 204
    assert first.content == b""
    assert call(clazar_sim, "DELETE", path, bearer=bearer).status_code == 404


def test_put_merges_fields_ignores_read_only_ones_and_bumps_last_modified_at(clazar_sim):
    listing = clazar_sim.seed(listings=[LISTING])["listings"][0]
    body = {"description": "New", "id": "forged", "created_at": "2000-01-01T00:00:00Z"}
    updated = call(clazar_sim, "PUT", f"/listings/{listing['id']}/", json=body).json()
    assert updated["id"] == listing["id"]
    assert updated["name"] == "Data Platform"
    assert updated["description"] == "New"
    assert updated["created_at"] == listing["created_at"]
    assert updated["last_modified_at"] > listing["last_modified_at"]


def test_it_answers_415_without_a_json_content_type_and_400_for_broken_json(clazar_sim):
    bearer = token(clazar_sim)
    plain = call(clazar_sim, "POST", "/listings/", bearer=bearer, data=b'{"name": "x"}')
    assert plain.status_code == 415
    broken = call(
        clazar_sim,
        "POST",
        "/listings/",
        bearer=bearer,
        data=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert broken.status_code == 400
    assert broken.json()["detail"].startswith("JSON parse error")


def test_it_reads_a_chunked_request_body(clazar_sim):
    chunks = iter([b'{"name": "Chunked", ', b'"cloud": "azure"}'])
    headers = {"Content-Type": "application/json"}
    answer = call(clazar_sim, "POST", "/listings/", data=chunks, headers=headers)
    assert answer.status_code == 201
    assert answer.json()["name"] == "Chunked"


def test_it_accepts_metering_records_one_at_a_time_or_in_a_batch(clazar_sim):
    record = {
        "cloud": "aws",
        "contract_id": "c-1",
        "dimension": "api_calls",
        "quantity": 42,
        "start_time": "2025-01-01T00:00:00Z",
        "end_time": "2025-01-01T01:00:00Z",
    }
    bearer = token(clazar_sim)
    one = call(clazar_sim, "POST", "/metering/", bearer=bearer, json=record)
    assert one.status_code == 201
    assert one.json()["status"] == "success"
    batch = call(clazar_sim, "POST", "/metering/", bearer=bearer, json={"request": [record, record]})
    assert batch.status_code == 200
    assert len(batch.json()["results"]) == 2
    bad = call(clazar_sim, "POST", "/metering/", bearer=bearer, json={"request": [record, {"quantity": "x"}]})
    assert bad.status_code == 400
    errors = bad.json()["request"]
    assert errors[0] == {}
    assert errors[1]["quantity"] == ["A valid number is required."]
    assert errors[1]["dimension"] == ["This field is required."]
    assert len(clazar_sim.objects("metering")) == 3


# -- rate limit and idempotency ------------------------------------------------------------------


def test_it_throttles_each_token_with_429_and_retry_after(clazar_sim):
    clazar_sim.configure(rate_limit=3, rate_window=30)
    bearer = token(clazar_sim)
    assert [call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code for _ in range(3)] == [200] * 3
    throttled = call(clazar_sim, "GET", "/listings/", bearer=bearer)
    assert throttled.status_code == 429
    wait = int(throttled.headers["Retry-After"])
    assert 1 <= wait <= 30
    assert throttled.json() == {"detail": f"Request was throttled. Expected available in {wait} seconds."}
    assert call(clazar_sim, "GET", "/listings/").status_code == 200  # another token, its own budget


def test_it_replays_the_first_response_for_a_repeated_idempotency_key(clazar_sim):
    clazar_sim.configure(idempotency=True)
    bearer = token(clazar_sim)
    headers = {"Idempotency-Key": "delivery-1"}
    first = call(clazar_sim, "POST", "/listings/", bearer=bearer, json=LISTING, headers=dict(headers))
    second = call(clazar_sim, "POST", "/listings/", bearer=bearer, json=LISTING, headers=dict(headers))
    assert first.status_code == second.status_code == 201
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(clazar_sim.objects("listings")) == 1
    other = call(
        clazar_sim, "POST", "/listings/", bearer=bearer, json={**LISTING, "name": "B"}, headers=headers
    )
    assert other.status_code == 422


def test_it_creates_again_for_a_repeated_idempotency_key_when_the_mode_is_off(clazar_sim):
    bearer = token(clazar_sim)
    ids = {
        call(
            clazar_sim, "POST", "/listings/", bearer=bearer, json=LISTING, headers={"Idempotency-Key": "k"}
        ).json()["id"]
        for _ in range(2)
    }
    assert len(ids) == 2


# -- faults --------------------------------------------------------------------------------------


def test_it_answers_a_5xx_on_the_nth_call_of_a_route(clazar_sim):
    clazar_sim.add_fault("error", route="create_listing", on_call=2, status=502)
    bearer = token(clazar_sim)
    statuses = [
        call(clazar_sim, "POST", "/listings/", bearer=bearer, json=LISTING).status_code for _ in range(3)
    ]
    assert statuses == [201, 502, 201]
    assert call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code == 200
    assert len(clazar_sim.objects("listings")) == 2
    assert clazar_sim.faults()[0]["fired"] == 1


def test_it_adds_latency_to_a_route_only(clazar_sim):
    clazar_sim.add_fault("latency", route="GET /listings/", seconds=0.3)
    bearer = token(clazar_sim)
    started = time.monotonic()
    assert call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    call(clazar_sim, "GET", "/opportunities/", bearer=bearer)
    assert time.monotonic() - started < 0.3


def test_it_answers_401_once_even_with_a_valid_token(clazar_sim):
    clazar_sim.add_fault("unauthorized")
    bearer = token(clazar_sim)
    assert call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code == 401
    assert call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code == 200


def test_it_applies_a_create_then_drops_the_connection(clazar_sim):
    clazar_sim.add_fault("drop", route="POST /private_offers/")
    target = offer(clazar_sim)
    with pytest.raises(requests.ConnectionError):
        call(clazar_sim, "POST", "/private_offers/", json={**target, "name": "Dropped"})
    assert [o["name"] for o in clazar_sim.objects("private_offers")] == ["Acme 3y", "Dropped"]
    assert clazar_sim.requests_log(path="/private_offers/")[-1]["status"] is None


def test_it_can_drop_the_connection_without_applying(clazar_sim):
    clazar_sim.add_fault("drop", route="create_listing", apply=False)
    with pytest.raises(requests.ConnectionError):
        call(clazar_sim, "POST", "/listings/", json=LISTING)
    assert clazar_sim.objects("listings") == []


def test_it_hangs_past_the_read_timeout_after_applying(clazar_sim):
    clazar_sim.add_fault("hang", route="create_listing", seconds=3)
    bearer = token(clazar_sim)
    with pytest.raises(requests.ReadTimeout):
        call(clazar_sim, "POST", "/listings/", bearer=bearer, json=LISTING, timeout=(1, 0.3))
    assert len(clazar_sim.objects("listings")) == 1


def test_it_answers_a_malformed_body(clazar_sim):
    clazar_sim.add_fault("malformed", route="create_listing")
    answer = call(clazar_sim, "POST", "/listings/", json=LISTING)
    assert answer.status_code == 201
    with pytest.raises(ValueError):
        answer.json()
    assert len(clazar_sim.objects("listings")) == 1


def test_it_answers_a_huge_body(clazar_sim):
    clazar_sim.add_fault("huge", route="GET /listings/", size=3_000_000)
    answer = call(clazar_sim, "GET", "/listings/")
    assert answer.status_code == 200
    assert len(answer.content) > 3_000_000
    assert answer.json()["count"] == 0


def test_it_answers_a_redirect(clazar_sim):
    clazar_sim.add_fault("redirect", location="https://elsewhere.invalid/listings/")
    answer = call(clazar_sim, "GET", "/listings/", allow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["Location"] == "https://elsewhere.invalid/listings/"


def test_faults_reach_the_token_call_only_when_routed_to_it(clazar_sim):
    clazar_sim.add_fault("error", status=500)
    token(clazar_sim)  # route-less faults skip /authenticate/
    clazar_sim.set_faults([{"kind": "error", "route": "authenticate", "status": 503}])
    body = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    answer = requests.post(f"{clazar_sim.url}/authenticate/", json=body, timeout=TIMEOUT)
    assert answer.status_code == 503
    assert len(clazar_sim.faults()) == 1


def test_faults_can_be_set_listed_and_cleared_over_http(clazar_sim):
    url = f"{clazar_sim.url}/__sim/faults"
    faults = [{"kind": "error", "status": 500, "times": 2}, {"kind": "latency", "seconds": 0}]
    assert requests.post(url, json=faults, timeout=TIMEOUT).status_code == 200
    bearer = token(clazar_sim)
    statuses = [call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    listed = requests.get(url, timeout=TIMEOUT).json()["faults"]
    assert [(f["kind"], f["seen"], f["fired"]) for f in listed] == [("error", 2, 2), ("latency", 3, 3)]
    assert requests.post(url, json={"kind": "meltdown"}, timeout=TIMEOUT).status_code == 400
    assert requests.delete(url, timeout=TIMEOUT).json() == {"faults": []}
    assert clazar_sim.faults() == []


# -- control routes ------------------------------------------------------------------------------


def test_control_routes_seed_reset_and_report_health(clazar_sim):
    url = f"{clazar_sim.url}/__sim"
    seeded = requests.post(f"{url}/seed", json={"listings": [LISTING]}, timeout=TIMEOUT)
    assert seeded.status_code == 201
    listing_id = seeded.json()["listings"][0]["id"]
    bearer = token(clazar_sim)
    assert call(clazar_sim, "GET", f"/listings/{listing_id}/", bearer=bearer).status_code == 200
    health = requests.get(f"{url}/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok"
    assert health["objects"]["listings"] == 1
    assert requests.post(f"{url}/seed", json={"planets": []}, timeout=TIMEOUT).status_code == 400
    assert requests.post(f"{url}/reset", timeout=TIMEOUT).status_code == 200
    assert clazar_sim.objects("listings") == []
    assert call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code == 401  # tokens forgotten too


def test_the_request_log_masks_secrets_and_skips_control_routes(clazar_sim):
    bearer = token(clazar_sim)
    call(clazar_sim, "POST", "/listings/", bearer=bearer, json=LISTING, headers={"Idempotency-Key": "k1"})
    log = requests.get(f"{clazar_sim.url}/__sim/requests", timeout=TIMEOUT).json()["requests"]
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/authenticate/", 200),
        ("POST", "/listings/", 201),
    ]
    assert log[0]["json"] == {"client_id": DEFAULT_CLIENT_ID, "client_secret": "***"}
    assert log[1]["headers"]["authorization"] == "Bearer ***"
    assert log[1]["headers"]["idempotency-key"] == "k1"
    assert log[1]["json"] == LISTING
    assert DEFAULT_CLIENT_SECRET not in json.dumps(log)
    assert bearer not in json.dumps(log)


def test_settings_can_be_changed_over_http(clazar_sim):
    url = f"{clazar_sim.url}/__sim/config"
    assert (
        requests.post(url, json={"rate_limit": 1, "idempotency": True}, timeout=TIMEOUT).json()["rate_limit"]
        == 1
    )
    assert requests.post(url, json={"rate_limit": -1}, timeout=TIMEOUT).status_code == 400
    bearer = token(clazar_sim)
    assert call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code == 200
    assert call(clazar_sim, "GET", "/listings/", bearer=bearer).status_code == 429


def test_the_shared_simulator_starts_each_test_clean(clazar_sim_shared):
    assert clazar_sim_shared.running
    assert clazar_sim_shared.requests_log() == []
    assert call(clazar_sim_shared, "POST", "/listings/", json=LISTING).status_code == 201


# -- load and running it -------------------------------------------------------------------------


def test_it_answers_every_request_from_many_concurrent_clients(clazar_sim):
    bearer = token(clazar_sim)
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def client(n: int) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {bearer}"
            start.wait()
            for i in range(4):
                if i % 2:
                    answer = session.get(f"{clazar_sim.url}/listings/", timeout=TIMEOUT)
                else:
                    answer = session.post(
                        f"{clazar_sim.url}/listings/", json={**LISTING, "name": f"{n}-{i}"}, timeout=TIMEOUT
                    )
                with lock:
                    statuses.append(answer.status_code)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(statuses) == [200] * 100 + [201] * 100
    assert len({o["id"] for o in clazar_sim.objects("listings")}) == 100


def test_it_runs_in_the_foreground_from_the_command_line():
    process = subprocess.Popen(
        [sys.executable, "-m", "clazar_dest.simulators.clazar", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("Clazar simulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert requests.get(f"{url}/__sim/health", timeout=TIMEOUT).json()["status"] == "ok"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
