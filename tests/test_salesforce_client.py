"""The Salesforce REST client: its pure parts first, then describe, query, update and failures against the
Salesforce simulator over sockets."""

from __future__ import annotations

import pickle
import socket
import time
from datetime import timedelta

import pytest

from clazar_dest.salesforce import API_VERSION, oauth, soql
from clazar_dest.salesforce import client as client_module
from clazar_dest.salesforce.client import (
    ObjectAccess,
    SalesforceClient,
    SalesforceError,
    SalesforceUnavailable,
    SessionExpired,
    next_records_path,
    object_access,
    strip_attributes,
)
from clazar_dest.simulators.salesforce import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    SalesforceSimulator,
)

# -- pure ----------------------------------------------------------------------------------------------


def test_strip_attributes_removes_every_attributes_key_at_every_depth():
    record = {
        "attributes": {"type": "Opportunity", "url": "/services/data/v62.0/sobjects/Opportunity/006"},
        "Id": "006",
        "Account": {
            "attributes": {"type": "Account"},
            "Name": "Acme",
            "Owner": {"attributes": {}, "Name": "Jo"},
        },
        "Contacts": {"totalSize": 1, "done": True, "records": [{"attributes": {}, "Email": "a@b.c"}]},
        "Empty": None,
    }
    assert strip_attributes([record]) == [
        {
            "Id": "006",
            "Account": {"Name": "Acme", "Owner": {"Name": "Jo"}},
            "Contacts": {"totalSize": 1, "done": True, "records": [{"Email": "a@b.c"}]},
            "Empty": None,
        }
    ]


@pytest.mark.parametrize(
    "url",
    [
        "/services/data/v62.0/query/01gD0000002HU6KIAW-2000",
        "/services/data/v58.0/query/abc-4000",
    ],
)
def test_next_records_path_accepts_relative_paths_under_services_data(url):
    assert next_records_path(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/services/data/v62.0/query/x-2000",
        "//evil.example/services/data/v62.0/query/x-2000",
        "/services/data/../../evil",
        "/services/data/v62.0/./query",
        "/services/data//v62.0/query",
        "/services/apexrest/steal",
        "/services/data/v62.0/query/x-2000?q=1",
        "/services/data/v62.0/query/x-2000#f",
        "/services/data/v62.0/query/x\\y",
        "services/data/v62.0/query/x-2000",
        "",
        None,
        42,
    ],
)
def test_next_records_path_refuses_anything_else(url):
    with pytest.raises(SalesforceError) as caught:
        next_records_path(url)
    assert caught.value.code == "BAD_NEXT_RECORDS_URL"
    assert "not followed" in str(caught.value)


def test_error_strings_name_the_status_and_code():
    error = SalesforceError(400, "INVALID_FIELD", "No such column 'Foo' on entity 'Opportunity'.")
    assert (
        str(error) == "Salesforce answered 400 INVALID_FIELD: No such column 'Foo' on entity 'Opportunity'."
    )
    assert isinstance(SessionExpired(401, "INVALID_SESSION_ID", "x"), SalesforceError)
    down = SalesforceUnavailable("Could not reach acme.my.salesforce.com (connection refused).", 503)
    assert isinstance(down, SalesforceError)
    assert str(down) == "Could not reach acme.my.salesforce.com (connection refused)."
    assert (down.status, down.code) == (503, "UNAVAILABLE")


def test_errors_survive_pickling():
    for error in (
        SalesforceError(400, "INVALID_FIELD", "m"),
        SessionExpired(401, "INVALID_SESSION_ID", "m"),
        SalesforceUnavailable("down", 503),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)


def test_the_client_hides_its_token_and_checks_its_arguments_before_sending():
    client = SalesforceClient("https://acme.my.salesforce.com/", "00D!SECRET-TOKEN")
    assert client.instance_url == "https://acme.my.salesforce.com"
    assert client.api_version == API_VERSION == "v62.0"
    assert "SECRET" not in repr(client)
    for size in (199, 2001, 0, True, "500"):
        with pytest.raises(ValueError, match="batch_size"):
            client.query("SELECT Id FROM Account", batch_size=size)
    with pytest.raises(ValueError, match="record id"):
        client.update("Opportunity", "006/../../x", {"Name": "x"})
    with pytest.raises(ValueError, match="object name"):
        client.describe("Opportunity/../x")
    with pytest.raises(ValueError, match="API version"):
        SalesforceClient("https://acme.my.salesforce.com", "t", api_version="62")


# -- against the simulator -----------------------------------------------------------------------------


def client_for(sim: SalesforceSimulator, **kwargs) -> SalesforceClient:
    grant = sim.grant()
    kwargs.setdefault("timeout", (2, 10))
    return SalesforceClient(grant["instance_url"], grant["access_token"], **kwargs)


def renewer(sim: SalesforceSimulator, refresh_token: str, calls: list[str]):
    """A refresh callback that renews through the token endpoint, as the app does."""

    def renew(failed: str) -> str:
        calls.append(failed)
        return oauth.refresh(
            sim.url, DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, refresh_token
        ).access_token

    return renew


def test_describe_global_and_describe(sf_sim_shared):
    client = client_for(sf_sim_shared)
    names = {item["name"] for item in client.describe_global()}
    assert {"Account", "Contact", "Opportunity", "Lead", "Quote"} <= names
    described = client.describe("Opportunity")
    fields = {field["name"]: field for field in described["fields"]}
    assert fields["Clazar_Opportunity_Id__c"]["updateable"] is True
    assert fields["AccountId"]["relationshipName"] == "Account"
    with pytest.raises(SalesforceError) as caught:
        client.describe("Contract")
    assert (caught.value.status, caught.value.code) == (404, "NOT_FOUND")


def test_query_follows_every_page_of_5000_records(sf_sim_shared):
    sf_sim_shared.seed(opportunities=5000)
    client = client_for(sf_sim_shared)
    pages = list(client.query("SELECT Id, Name, Account.Name FROM Opportunity"))
    assert [len(page.records) for page in pages] == [2000, 2000, 1000]
    assert [page.done for page in pages] == [False, False, True]
    assert {page.total_size for page in pages} == {5000}
    ids = [record["Id"] for page in pages for record in page.records]
    assert len(set(ids)) == 5000
    assert all("attributes" not in record for page in pages for record in page.records)
    accounts = [record["Account"] for page in pages for record in page.records if record["Account"]]
    assert accounts and all(set(account) == {"Name"} for account in accounts)
    assert [entry["route"] for entry in sf_sim_shared.requests_log()] == ["query", "query_more", "query_more"]


def test_query_asks_for_the_batch_size_on_every_page(sf_sim_shared):
    sf_sim_shared.seed(opportunities=1000)
    client = client_for(sf_sim_shared)
    pages = list(client.query("SELECT Id FROM Opportunity", batch_size=300))
    assert [len(page.records) for page in pages] == [300, 300, 300, 100]
    log = sf_sim_shared.requests_log()
    assert len(log) == 4
    assert {entry["headers"]["sforce-query-options"] for entry in log} == {"batchSize=300"}


def test_query_all_and_org_name(sf_sim_shared):
    client = client_for(sf_sim_shared)
    assert len(client.query_all("SELECT Id FROM Opportunity")) == 60
    assert client.org_name() == sf_sim_shared.config()["org_name"]


def test_a_query_built_by_soql_select_runs_and_filters(sf_sim_shared):
    client = client_for(sf_sim_shared)
    everything = client.query_all("SELECT Id, StageName, SystemModstamp FROM Opportunity")
    won = [record for record in everything if record["StageName"] == "Closed Won"]
    query = soql.select(
        "Opportunity", ["Name", "StageName"], where=f"StageName = {soql.literal('Closed Won')}"
    )
    assert [record["Id"] for record in client.query_all(query)] == [
        record["Id"]
        for record in sorted(
            won, key=lambda record: (soql.parse_datetime(record["SystemModstamp"]), record["Id"])
        )
    ]
    (changed,) = sf_sim_shared.touch("Opportunity", count=1)
    latest = max(soql.parse_datetime(record["SystemModstamp"]) for record in everything)
    since = latest + timedelta(seconds=1)
    assert [
        record["Id"] for record in client.query_all(soql.select("Opportunity", ["Name"], since=since))
    ] in (
        [changed],
        [],  # the touch landed within the same second as the latest stamp
    )


@pytest.mark.parametrize(
    "text", ["O'Brien", 'say "hi"', "back\\slash", "two\nlines", "tab\there", "SELECT;)("]
)
def test_escaped_literals_are_valid_soql(sf_sim_shared, text):
    client = client_for(sf_sim_shared)
    query = soql.select(
        "Opportunity", ["Name"], where=f"Name = {soql.literal(text)} OR Name != null", limit=1
    )
    assert len(client.query_all(query)) == 1


def test_a_bad_column_is_a_salesforce_error_naming_it(sf_sim_shared):
    client = client_for(sf_sim_shared)
    with pytest.raises(SalesforceError) as caught:
        client.query_all("SELECT Foo FROM Opportunity")
    assert str(caught.value).startswith("Salesforce answered 400 INVALID_FIELD: No such column 'Foo'")
    assert not isinstance(caught.value, SalesforceUnavailable)


def test_update_sets_a_field_and_refusals_are_errors(sf_sim_shared):
    sim = sf_sim_shared
    client = client_for(sim)
    record_id = client.query_all("SELECT Id FROM Opportunity LIMIT 1")[0]["Id"]
    client.update("Opportunity", record_id, {"Clazar_Opportunity_Id__c": "clz-123"})
    (stored,) = client.query_all(f"SELECT Clazar_Opportunity_Id__c FROM Opportunity WHERE Id = '{record_id}'")
    assert stored["Clazar_Opportunity_Id__c"] == "clz-123"
    with pytest.raises(SalesforceError) as caught:
        client.update("Opportunity", record_id, {"Nope__c": 1})
    assert (caught.value.status, caught.value.code) == (400, "INVALID_FIELD")
    with pytest.raises(SalesforceError) as caught:
        client.update("Opportunity", "006" + "9" * 12 + "AAA", {"Name": "x"})
    assert (caught.value.status, caught.value.code) == (404, "NOT_FOUND")
    sim.configure(permissions={"Opportunity": {"edit": False}})
    with pytest.raises(SalesforceError) as caught:
        client.update("Opportunity", record_id, {"Name": "x"})
    assert (caught.value.status, caught.value.code) == (403, "INSUFFICIENT_ACCESS_OR_READONLY")


def test_object_access_reflects_the_users_permissions(sf_sim_shared):
    sf_sim_shared.configure(
        permissions={
            "Quote": {"read": False, "create": False, "edit": False, "delete": False},
            "Lead": {"edit": False, "delete": False},
            "Contact": {"create": False},
        }
    )
    client = client_for(sf_sim_shared)
    access = {
        item.name: item
        for item in object_access(client, names=("Account", "Contact", "Lead", "Quote", "Contract"))
    }
    assert list(access) == ["Account", "Contact", "Lead", "Quote", "Contract"]
    assert access["Account"] == ObjectAccess("Account", "Account", True, True, True, True)
    assert access["Contact"] == ObjectAccess("Contact", "Contact", True, False, True, True)
    assert access["Lead"] == ObjectAccess("Lead", "Lead", True, True, False, False)
    assert access["Quote"].read is False
    assert access["Contract"] == ObjectAccess("Contract", "Contract", False, False, False, False)


def test_an_expired_token_is_renewed_once_and_the_call_sent_again(sf_sim_shared):
    sim = sf_sim_shared
    grant = sim.grant()
    calls: list[str] = []
    client = SalesforceClient(
        grant["instance_url"], grant["access_token"], refresh=renewer(sim, grant["refresh_token"], calls)
    )
    sim.expire_access_tokens()
    assert client.org_name() == sim.config()["org_name"]
    assert calls == [grant["access_token"]]
    assert client.access_token != grant["access_token"]
    assert [entry["status"] for entry in sim.requests_log(path=f"/services/data/{API_VERSION}/query")] == [
        401,
        200,
    ]
    assert client.org_name()  # the renewed token keeps working without another refresh
    assert len(calls) == 1


def test_a_401_without_a_refresh_callback_is_session_expired(sf_sim_shared):
    client = client_for(sf_sim_shared)
    token = client.access_token
    sf_sim_shared.expire_access_tokens()
    with pytest.raises(SessionExpired) as caught:
        client.describe_global()
    assert caught.value.status == 401
    assert "Reconnect Salesforce" in str(caught.value)
    assert token not in str(caught.value)


def test_a_second_401_after_renewing_is_session_expired(sf_sim_shared):
    sim = sf_sim_shared
    grant = sim.grant()
    calls: list[str] = []
    client = SalesforceClient(
        grant["instance_url"], grant["access_token"], refresh=renewer(sim, grant["refresh_token"], calls)
    )
    sim.add_fault("unauthorized", route="describe_global", times=2)
    with pytest.raises(SessionExpired, match="renewed token was refused too") as caught:
        client.describe_global()
    assert len(calls) == 1
    assert grant["access_token"] not in str(caught.value)
    assert client.access_token not in str(caught.value)


def test_a_refresh_that_fails_raises_its_own_error(sf_sim_shared):
    sim = sf_sim_shared
    grant = sim.grant()
    oauth.revoke(sim.url, grant["refresh_token"])
    client = SalesforceClient(
        grant["instance_url"], grant["access_token"], refresh=renewer(sim, grant["refresh_token"], [])
    )
    with pytest.raises(oauth.InvalidGrant, match="reconnect Salesforce"):
        client.describe_global()


def test_a_503_is_unavailable_and_says_to_try_later(sf_sim_shared):
    client = client_for(sf_sim_shared)
    sf_sim_shared.add_fault("error", route="query", status=503)
    with pytest.raises(SalesforceUnavailable) as caught:
        client.query_all("SELECT Id FROM Opportunity")
    assert isinstance(caught.value, SalesforceError)
    assert caught.value.status == 503
    assert "server error (HTTP 503" in str(caught.value)
    assert "Try again later" in str(caught.value)
    assert client.access_token not in str(caught.value)


def test_a_failure_on_a_later_page_comes_after_the_pages_before_it(sf_sim_shared):
    sf_sim_shared.seed(opportunities=500)
    client = client_for(sf_sim_shared)
    sf_sim_shared.add_fault("error", route="query_more", status=500)
    pages = client.query("SELECT Id FROM Opportunity", batch_size=200)
    assert len(next(pages).records) == 200
    with pytest.raises(SalesforceUnavailable, match="page 2 of the query"):
        next(pages)


def test_a_hanging_answer_times_out(sf_sim):
    """On a simulator of its own: stopping it ends the hanging handler, which could log into a later test."""
    client = client_for(sf_sim, timeout=(2, 0.5))
    sf_sim.add_fault("hang", route="describe_global", seconds=3)
    started = time.monotonic()
    with pytest.raises(SalesforceUnavailable, match=r"did not answer .* within 0.5 s"):
        client.describe_global()
    assert time.monotonic() - started < 2.5


def test_a_dropped_connection_is_unavailable(sf_sim_shared):
    client = client_for(sf_sim_shared)
    sf_sim_shared.add_fault("drop", route="describe", apply=False)
    with pytest.raises(SalesforceUnavailable, match="closed the connection without answering"):
        client.describe("Account")


def test_a_redirect_is_not_followed_and_names_where_it_pointed(sf_sim_shared):
    """The authorize route answers a bad response_type with a redirect to the given redirect_uri."""
    client = client_for(sf_sim_shared)
    path = (
        "/services/oauth2/authorize?response_type=token&client_id="
        f"{DEFAULT_CONSUMER_KEY}&redirect_uri=https%3A%2F%2Felsewhere.example%2Fcb"
    )
    with pytest.raises(SalesforceError) as caught:
        client.request("GET", path)
    assert caught.value.code == "REDIRECT"
    assert "elsewhere.example" in str(caught.value)
    assert "not followed" in str(caught.value)


def test_an_answer_that_is_not_json_is_unavailable(sf_sim_shared):
    """The consent page is HTML: a client pointed at a non-API address gets a clear error."""
    client = client_for(sf_sim_shared)
    path = (
        "/services/oauth2/authorize?response_type=code&client_id="
        f"{DEFAULT_CONSUMER_KEY}&redirect_uri=https%3A%2F%2Fclazar.example%2Fcb"
    )
    answer = client.request("GET", path)
    with pytest.raises(SalesforceUnavailable, match="not JSON"):
        answer.json()


def test_a_closed_port_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = SalesforceClient(f"http://127.0.0.1:{port}", "token", timeout=(2, 2))
    with pytest.raises(SalesforceUnavailable, match="connection refused"):
        client.describe_global()


def test_an_answer_over_the_size_cap_is_refused(sf_sim_shared, monkeypatch):
    client = client_for(sf_sim_shared)
    monkeypatch.setattr(client_module, "MAX_BODY", 2000)
    with pytest.raises(SalesforceError) as caught:
        client.describe("Opportunity")
    assert caught.value.code == "TOO_LARGE"
    assert "larger than 2000 bytes" in str(caught.value)
    monkeypatch.undo()
    assert client.describe("Opportunity")["name"] == "Opportunity"  # the cut connection is not reused
