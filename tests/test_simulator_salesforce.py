"""Contract tests of the Salesforce simulator over a real socket (no database, no Django needed)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from clazar_dest.simulators.salesforce import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    SalesforceSimulator,
)
from clazar_dest.simulators.salesforce_schema import SCHEMA
from clazar_dest.simulators.salesforce_soql_eval import execute
from clazar_dest.simulators.salesforce_soql_parser import SoqlError

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 5
V = "/services/data/v62.0"
CALLBACK = "http://testserver/cb"


# -- helpers -------------------------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(sim: SalesforceSimulator, challenge: str | None = None, **overrides: str) -> str:
    params = {
        "response_type": "code",
        "client_id": DEFAULT_CONSUMER_KEY,
        "redirect_uri": CALLBACK,
        "state": "st-123",
        "scope": "api refresh_token",
        **({"code_challenge": challenge, "code_challenge_method": "S256"} if challenge else {}),
        **overrides,
    }
    return f"{sim.url}/services/oauth2/authorize?{urlencode(params)}"


def callback_params(location: str) -> dict[str, str]:
    assert location.startswith(CALLBACK)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def token_call(sim: SalesforceSimulator, **form: str) -> requests.Response:
    body = {"client_id": DEFAULT_CONSUMER_KEY, "client_secret": DEFAULT_CONSUMER_SECRET, **form}
    return requests.post(f"{sim.url}/services/oauth2/token", data=body, timeout=TIMEOUT)


def exchange(sim: SalesforceSimulator, code: str, verifier: str | None, **form: str) -> requests.Response:
    extra = {"code_verifier": verifier} if verifier is not None else {}
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, **extra, **form}
    return token_call(sim, **form)


def code_for(sim: SalesforceSimulator, challenge: str | None = None) -> str:
    return callback_params(sim.approve(authorize_url(sim, challenge)))["code"]


def api(sim: SalesforceSimulator, bearer: str, path: str, method: str = "GET", **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {bearer}", **kw.pop("headers", {})}
    return requests.request(
        method, f"{sim.url}{path}", headers=headers, timeout=kw.pop("timeout", TIMEOUT), **kw
    )


def soql(sim: SalesforceSimulator, bearer: str, query: str, **kw) -> requests.Response:
    return api(sim, bearer, f"{V}/query", params={"q": query}, **kw)


def ids(answer: requests.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [r["Id"] for r in answer.json()["records"]]


def bearer(sim: SalesforceSimulator) -> str:
    return sim.grant()["access_token"]


# -- the OAuth web server flow -------------------------------------------------------------------


def test_the_consent_page_shows_the_app_the_user_the_org_and_the_scopes(sf_sim):
    _, challenge = pkce()
    page = requests.get(authorize_url(sf_sim, challenge, scope="api refresh_token id"), timeout=TIMEOUT)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    text = page.text
    assert "Allow access?" in text
    assert "clazar-dest" in text
    assert "integration@acme.example" in text
    assert "Acme Inc." in text
    assert "Access and manage your data (api)" in text
    assert "Perform requests on your behalf at any time" in text
    assert "Access your basic information" in text
    assert 'action="/services/oauth2/authorize/decision"' in text
    assert '<button type="submit" name="decision" value="allow">Allow</button>' in text
    assert '<button type="submit" name="decision" value="deny">Deny</button>' in text


def test_allowing_redirects_with_a_single_use_code_that_gives_working_tokens(sf_sim):
    verifier, challenge = pkce()
    location = sf_sim.approve(authorize_url(sf_sim, challenge))
    params = callback_params(location)
    assert params["state"] == "st-123"
    first = exchange(sf_sim, params["code"], verifier)
    assert first.status_code == 200, first.text
    tokens = first.json()
    assert set(tokens) == {
        "access_token",
        "refresh_token",
        "signature",
        "scope",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
    }
    assert tokens["instance_url"] == sf_sim.url
    assert tokens["id"] == f"{sf_sim.url}/id/{sf_sim.config()['org_id']}/{sf_sim.config()['user_id']}"
    assert tokens["token_type"] == "Bearer"
    assert tokens["scope"] == "api refresh_token"
    assert abs(int(tokens["issued_at"]) - time.time() * 1000) < 60_000
    assert api(sf_sim, tokens["access_token"], f"{V}/sobjects/").status_code == 200
    again = exchange(sf_sim, params["code"], verifier)
    assert again.status_code == 400
    assert again.json() == {"error": "invalid_grant", "error_description": "invalid authorization code"}


def test_denying_redirects_with_access_denied_and_the_state(sf_sim):
    location = sf_sim.deny(authorize_url(sf_sim))
    assert location == (
        f"{CALLBACK}?error=access_denied&error_description=end-user+denied+authorization&state=st-123"
    )


def test_the_consent_decision_can_be_posted_only_once(sf_sim):
    page = requests.get(authorize_url(sf_sim), timeout=TIMEOUT).text
    request_id = re.search(r'name="request" value="([^"]+)"', page).group(1)
    url = f"{sf_sim.url}/services/oauth2/authorize/decision"
    form = {"request": request_id, "decision": "allow"}
    first = requests.post(url, data=form, allow_redirects=False, timeout=TIMEOUT)
    assert first.status_code == 302
    again = requests.post(url, data=form, allow_redirects=False, timeout=TIMEOUT)
    assert again.status_code == 400
    assert "error=invalid_request" in again.text


@pytest.mark.parametrize("verifier", [None, "", "not-the-verifier"], ids=["missing", "empty", "wrong"])
def test_it_refuses_a_missing_or_wrong_code_verifier(sf_sim, verifier):
    _, challenge = pkce()
    answer = exchange(sf_sim, code_for(sf_sim, challenge), verifier)
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_grant", "error_description": "invalid code verifier"}


def test_it_refuses_a_code_with_another_redirect_uri_or_client(sf_sim):
    verifier, challenge = pkce()
    moved = exchange(sf_sim, code_for(sf_sim, challenge), verifier, redirect_uri="http://testserver/other")
    assert moved.status_code == 400
    assert moved.json() == {
        "error": "redirect_uri_mismatch",
        "error_description": "redirect_uri must match configuration",
    }
    wrong = exchange(sf_sim, code_for(sf_sim, challenge), verifier, client_secret="nope")
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_client", "error_description": "invalid client credentials"}


def test_the_token_endpoint_takes_client_credentials_by_http_basic(sf_sim):
    code = code_for(sf_sim)
    answer = requests.post(
        f"{sf_sim.url}/services/oauth2/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        auth=(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET),
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    unknown = token_call(sf_sim, grant_type="password")
    assert unknown.json() == {
        "error": "unsupported_grant_type",
        "error_description": "grant type not supported",
    }


def test_the_authorize_page_refuses_an_unknown_client_or_an_unlisted_redirect_uri(sf_sim):
    unknown = requests.get(
        authorize_url(sf_sim, client_id="someone-else"), timeout=TIMEOUT, allow_redirects=False
    )
    assert unknown.status_code == 400
    assert "error=invalid_client_id" in unknown.text
    sf_sim.configure(callback_urls=[CALLBACK])
    unlisted = requests.get(
        authorize_url(sf_sim, redirect_uri="http://evil.example/cb"), timeout=TIMEOUT, allow_redirects=False
    )
    assert unlisted.status_code == 400
    assert "error=redirect_uri_mismatch" in unlisted.text
    assert "Location" not in unlisted.headers
    assert callback_params(sf_sim.approve(authorize_url(sf_sim)))["code"]
    with pytest.raises(RuntimeError, match="redirect_uri_mismatch"):
        sf_sim.approve(authorize_url(sf_sim, redirect_uri="http://evil.example/cb"))


def test_the_authorize_page_redirects_a_bad_response_type_or_challenge_method(sf_sim):
    bad_type = callback_params(sf_sim.approve(authorize_url(sf_sim, response_type="token")))
    assert bad_type["error"] == "unsupported_response_type"
    assert bad_type["state"] == "st-123"
    plain = callback_params(
        sf_sim.approve(authorize_url(sf_sim, code_challenge="abc", code_challenge_method="plain"))
    )
    assert plain["error"] == "invalid_request"


def test_without_the_refresh_token_scope_no_refresh_token_is_issued(sf_sim):
    location = sf_sim.approve(authorize_url(sf_sim, scope="api"))
    tokens = exchange(sf_sim, callback_params(location)["code"], None).json()
    assert "refresh_token" not in tokens
    assert tokens["scope"] == "api"


def test_refresh_rotates_the_refresh_token_and_the_old_one_stops_working(sf_sim):
    first = sf_sim.grant()
    renewed = token_call(sf_sim, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    data = renewed.json()
    assert data["refresh_token"] != first["refresh_token"]
    assert data["access_token"] != first["access_token"]
    assert data["instance_url"] == sf_sim.url
    stale = token_call(sf_sim, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert stale.status_code == 400
    assert stale.json() == {"error": "invalid_grant", "error_description": "expired access/refresh token"}
    assert (
        api(sf_sim, first["access_token"], f"{V}/sobjects/").status_code == 200
    )  # old access token lives on
    assert (
        token_call(sf_sim, grant_type="refresh_token", refresh_token=data["refresh_token"]).status_code == 200
    )


def test_refresh_keeps_the_refresh_token_when_rotation_is_off(sf_sim):
    sf_sim.configure(rotate_refresh_tokens=False)
    first = sf_sim.grant()
    for _ in range(2):
        renewed = token_call(sf_sim, grant_type="refresh_token", refresh_token=first["refresh_token"])
        assert renewed.status_code == 200
        assert "refresh_token" not in renewed.json()
        assert api(sf_sim, renewed.json()["access_token"], f"{V}/sobjects/").status_code == 200


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
def test_revoking_either_token_kills_the_whole_grant(sf_sim, which):
    tokens = sf_sim.grant()
    other = sf_sim.grant()
    answer = requests.post(
        f"{sf_sim.url}/services/oauth2/revoke", data={"token": tokens[which]}, timeout=TIMEOUT
    )
    assert answer.status_code == 200
    assert answer.content == b""
    dead = api(sf_sim, tokens["access_token"], f"{V}/sobjects/")
    assert dead.status_code == 401
    assert dead.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    refused = token_call(sf_sim, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refused.json()["error"] == "invalid_grant"
    assert api(sf_sim, other["access_token"], f"{V}/sobjects/").status_code == 200
    again = requests.post(
        f"{sf_sim.url}/services/oauth2/revoke", data={"token": tokens[which]}, timeout=TIMEOUT
    )
    assert again.status_code == 400
    assert again.json() == {
        "error": "unsupported_token_type",
        "error_description": "this token type is not supported",
    }


def test_identity_and_userinfo_describe_the_connected_user(sf_sim):
    sf_sim.configure(username="ops@globex.example", display_name="Ops Robot", org_name="Globex")
    tokens = sf_sim.grant()
    identity = api(sf_sim, tokens["access_token"], urlsplit(tokens["id"]).path)
    assert identity.status_code == 200
    data = identity.json()
    config = sf_sim.config()
    assert data["id"] == tokens["id"]
    assert data["asserted_user"] is True
    assert (data["user_id"], data["organization_id"]) == (config["user_id"], config["org_id"])
    assert (data["username"], data["email"], data["display_name"]) == (
        "ops@globex.example",
        "ops@globex.example",
        "Ops Robot",
    )
    assert data["nick_name"] == "ops"
    assert data["active"] is True
    assert data["user_type"] == "STANDARD"
    assert data["urls"]["rest"] == f"{sf_sim.url}/services/data/v{{version}}/"
    info = api(sf_sim, tokens["access_token"], "/services/oauth2/userinfo").json()
    assert info["sub"] == tokens["id"]
    assert (info["preferred_username"], info["name"], info["email"]) == (
        "ops@globex.example",
        "Ops Robot",
        "ops@globex.example",
    )
    assert info["organization_id"] == config["org_id"]
    assert api(sf_sim, "nope", "/services/oauth2/userinfo").status_code == 401
    org = soql(sf_sim, tokens["access_token"], "SELECT Id, Name FROM Organization").json()["records"]
    assert [(o["Id"], o["Name"]) for o in org] == [(config["org_id"], "Globex")]


def test_the_token_endpoint_can_answer_a_tampered_instance_url(sf_sim):
    sf_sim.configure(tamper_instance_url="https://evil.example")
    assert exchange(sf_sim, code_for(sf_sim), None).json()["instance_url"] == "https://evil.example"
    assert sf_sim.grant()["instance_url"] == "https://evil.example"


# -- sessions ------------------------------------------------------------------------------------


def test_expired_access_tokens_answer_401_and_refreshing_still_works(sf_sim):
    tokens = sf_sim.grant()
    sf_sim.expire_access_tokens()
    expired = soql(sf_sim, tokens["access_token"], "SELECT Id FROM Account")
    assert expired.status_code == 401
    assert expired.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    renewed = token_call(sf_sim, grant_type="refresh_token", refresh_token=tokens["refresh_token"]).json()
    assert soql(sf_sim, renewed["access_token"], "SELECT Id FROM Account").status_code == 200


def test_access_tokens_expire_after_the_configured_lifetime(sf_sim):
    sf_sim.configure(access_token_ttl=0.3)
    token = bearer(sf_sim)
    assert api(sf_sim, token, f"{V}/sobjects/").status_code == 200
    time.sleep(0.35)
    assert api(sf_sim, token, f"{V}/sobjects/").status_code == 401


def test_rest_routes_need_a_bearer_token(sf_sim):
    for path in (f"{V}/sobjects/", f"{V}/query?q=SELECT+Id+FROM+Account", f"{V}/nothing"):
        answer = requests.get(f"{sf_sim.url}{path}", timeout=TIMEOUT)
        assert answer.status_code == 401
        assert answer.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    versions = requests.get(f"{sf_sim.url}/services/data/", timeout=TIMEOUT).json()
    assert {"label": "Winter '25", "url": "/services/data/v62.0", "version": "62.0"} in versions
    token = bearer(sf_sim)
    assert api(sf_sim, token, f"{V}/nothing").json()[0]["errorCode"] == "NOT_FOUND"
    assert api(sf_sim, token, f"{V}/query", method="POST").status_code == 405


# -- describe ------------------------------------------------------------------------------------


def test_describe_global_lists_the_readable_objects_with_the_user_s_flags(sf_sim):
    sf_sim.configure(permissions={"Lead": {"read": False}, "Opportunity": {"edit": False, "delete": False}})
    answer = api(sf_sim, bearer(sf_sim), f"{V}/sobjects/").json()
    assert answer["encoding"] == "UTF-8"
    assert answer["maxBatchSize"] == 200
    listed = {o["name"]: o for o in answer["sobjects"]}
    assert set(listed) == set(SCHEMA) - {"Lead"}
    opportunity = listed["Opportunity"]
    assert opportunity["keyPrefix"] == "006"
    assert opportunity["labelPlural"] == "Opportunities"
    assert (opportunity["queryable"], opportunity["createable"], opportunity["updateable"]) == (
        True,
        True,
        False,
    )
    assert opportunity["deletable"] is False
    assert listed["Organization"]["updateable"] is False


def test_describe_lists_fields_with_types_references_and_picklists(sf_sim):
    token = bearer(sf_sim)
    answer = api(sf_sim, token, f"{V}/sobjects/Opportunity/describe/")
    assert answer.status_code == 200
    data = answer.json()
    assert (data["name"], data["label"], data["keyPrefix"], data["custom"]) == (
        "Opportunity",
        "Opportunity",
        "006",
        False,
    )
    fields = {f["name"]: f for f in data["fields"]}
    assert fields["AccountId"]["type"] == "reference"
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert fields["AccountId"]["relationshipName"] == "Account"
    assert fields["CloseDate"]["type"] == "date"
    assert fields["Amount"]["type"] == "currency"
    assert fields["Probability"]["type"] == "percent"
    assert fields["Description"]["type"] == "textarea"
    assert fields["Description"]["filterable"] is False
    stages = [p["value"] for p in fields["StageName"]["picklistValues"]]
    assert stages[0] == "Prospecting"
    assert "Proposal/Price Quote" in stages
    assert "Closed Lost" in stages
    assert [p["value"] for p in fields["Cloud_Provider__c"]["picklistValues"]] == ["AWS", "Azure", "GCP"]
    custom = fields["Clazar_Opportunity_Id__c"]
    assert (custom["type"], custom["length"], custom["updateable"], custom["createable"]) == (
        "string",
        64,
        True,
        True,
    )
    assert fields["IsClosed"]["updateable"] is False
    assert fields["SystemModstamp"]["type"] == "datetime"
    assert api(sf_sim, token, f"{V}/sobjects/opportunity/describe").json()["name"] == "Opportunity"


def test_describe_answers_404_for_unknown_or_unreadable_objects_and_flags_follow_permissions(sf_sim):
    token = bearer(sf_sim)
    unknown = api(sf_sim, token, f"{V}/sobjects/Planet/describe")
    assert unknown.status_code == 404
    assert unknown.json() == [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
    sf_sim.configure(permissions={"Opportunity": {"read": False}})
    assert api(sf_sim, token, f"{V}/sobjects/Opportunity/describe").status_code == 404
    hidden = soql(sf_sim, token, "SELECT Id FROM Opportunity")
    assert hidden.json()[0]["errorCode"] == "INVALID_TYPE"
    sf_sim.configure(permissions={"Opportunity": {"edit": False, "create": False}})
    data = api(sf_sim, token, f"{V}/sobjects/Opportunity/describe").json()
    assert (data["queryable"], data["updateable"], data["createable"]) == (True, False, False)
    assert not any(f["updateable"] or f["createable"] for f in data["fields"])


# -- SOQL ----------------------------------------------------------------------------------------


def test_query_filters_with_and_or_not_in_like_and_null(sf_sim):
    query = (
        "select Id from opportunity where (StageName IN ('Closed Won', 'closed lost') or Amount >= 250000) "
        "AND NOT Name LIKE '%RENEWAL%' and Cloud_Provider__c != null"
    )
    expected = [
        r["Id"]
        for r in sf_sim.records("Opportunity")
        if (r["StageName"] in ("Closed Won", "Closed Lost") or (r["Amount"] or 0) >= 250000)
        and "renewal" not in r["Name"].lower()
        and r["Cloud_Provider__c"] is not None
    ]
    assert expected
    assert ids(soql(sf_sim, bearer(sf_sim), query)) == expected


def test_query_keeps_nulls_for_not_equal_and_not_in_and_drops_them_for_ranges(sf_sim):
    token = bearer(sf_sim)
    records = sf_sim.records("Opportunity")
    assert any(r["Cloud_Provider__c"] is None for r in records)
    not_aws = [r["Id"] for r in records if r["Cloud_Provider__c"] != "AWS"]
    assert ids(soql(sf_sim, token, "SELECT Id FROM Opportunity WHERE Cloud_Provider__c != 'aws'")) == not_aws
    assert (
        ids(soql(sf_sim, token, "SELECT Id FROM Opportunity WHERE Cloud_Provider__c NOT IN ('AWS')"))
        == not_aws
    )
    priced = [r["Id"] for r in records if r["Amount"] is not None and r["Amount"] < 100000]
    assert ids(soql(sf_sim, token, "SELECT Id FROM Opportunity WHERE Amount < 100000")) == priced
    nulls = [r["Id"] for r in records if r["Amount"] is None]
    assert nulls
    assert ids(soql(sf_sim, token, "SELECT Id FROM Opportunity WHERE Amount = null")) == nulls


def test_like_is_case_insensitive_and_honours_escapes(sf_sim):
    token = bearer(sf_sim)
    names = [r["Name"] for r in sf_sim.records("Account")]
    found = soql(sf_sim, token, "SELECT Name FROM Account WHERE Name LIKE 'o\\'reilly%'").json()["records"]
    assert [r["Name"] for r in found] == [n for n in names if n.startswith("O'Reilly")]
    sf_sim.create("Account", {"Name": "100% Cotton_Co"})
    sf_sim.create("Account", {"Name": "100X CottonXCo"})
    exact = soql(sf_sim, token, "SELECT Name FROM Account WHERE Name LIKE '100\\% cotton\\_co'").json()
    assert [r["Name"] for r in exact["records"]] == ["100% Cotton_Co"]
    loose = soql(sf_sim, token, "SELECT Name FROM Account WHERE Name LIKE '100_ Cotton_Co'").json()
    assert [r["Name"] for r in loose["records"]] == ["100% Cotton_Co", "100X CottonXCo"]


def test_query_nests_parent_fields_and_answers_null_without_a_parent(sf_sim):
    token = bearer(sf_sim)
    answer = soql(
        sf_sim,
        token,
        "SELECT Id, Name, Account.Name, Account.Website, AccountId FROM Opportunity "
        "WHERE Account.Name LIKE 'acme%' ORDER BY Name LIMIT 2",
    ).json()
    first = answer["records"][0]
    assert list(first) == ["attributes", "Id", "Name", "Account", "AccountId"]
    assert first["attributes"] == {"type": "Opportunity", "url": f"{V}/sobjects/Opportunity/{first['Id']}"}
    account = next(a for a in sf_sim.records("Account") if a["Id"] == first["AccountId"])
    assert first["Account"] == {
        "attributes": {"type": "Account", "url": f"{V}/sobjects/Account/{account['Id']}"},
        "Name": account["Name"],
        "Website": account["Website"],
    }
    orphan = soql(
        sf_sim, token, "SELECT Id, Account.Name FROM Opportunity WHERE AccountId = null LIMIT 1"
    ).json()
    assert orphan["records"][0]["Account"] is None
    quote = soql(
        sf_sim, token, "SELECT Name, Opportunity.Name, Opportunity.Account.Name FROM Quote LIMIT 1"
    ).json()
    nested = quote["records"][0]["Opportunity"]
    assert nested["Name"]
    assert nested["Account"]["Name"]


def test_query_orders_by_several_keys_with_nulls_first_or_last_and_limits(sf_sim):
    token = bearer(sf_sim)
    records = sf_sim.records("Opportunity")
    by_amount = sorted(records, key=lambda r: (r["Amount"] is not None, r["Amount"] or 0))
    dated = sorted((r for r in by_amount if r["CloseDate"]), key=lambda r: r["CloseDate"], reverse=True)
    expected = [r["Id"] for r in by_amount if r["CloseDate"] is None] + [r["Id"] for r in dated]
    query = "SELECT Id FROM Opportunity ORDER BY CloseDate DESC NULLS FIRST, Amount ASC LIMIT 40"
    assert ids(soql(sf_sim, token, query)) == expected[:40]
    ascending = soql(sf_sim, token, "SELECT Amount FROM Opportunity ORDER BY Amount").json()["records"]
    assert ascending[0]["Amount"] is None
    descending = soql(sf_sim, token, "SELECT Amount FROM Opportunity ORDER BY Amount DESC").json()["records"]
    assert descending[-1]["Amount"] is None
    assert descending[0]["Amount"] == max(r["Amount"] or 0 for r in records)
    names = soql(sf_sim, token, "SELECT Name FROM Account ORDER BY Name DESC NULLS LAST LIMIT 3").json()
    assert [r["Name"] for r in names["records"]] == sorted(
        (a["Name"] for a in sf_sim.records("Account")), key=str.casefold, reverse=True
    )[:3]
    assert soql(sf_sim, token, "SELECT Id FROM Opportunity LIMIT 0").json() == {
        "totalSize": 0,
        "done": True,
        "records": [],
    }


def test_query_compares_dates_and_date_literals_as_days(sf_sim):
    sf_sim.seed(accounts=0, opportunities=0)
    today = datetime.now(UTC).date()
    days = {"today": 0, "yesterday": -1, "ten days ago": -10, "in five days": 5, "next year": 400}
    for name, shift in days.items():
        sf_sim.create(
            "Opportunity",
            {"Name": name, "StageName": "Prospecting", "CloseDate": today + timedelta(days=shift)},
        )
    sf_sim.create("Opportunity", {"Name": "no date", "StageName": "Prospecting"})
    token = bearer(sf_sim)

    def names(condition: str) -> set[str]:
        answer = soql(sf_sim, token, f"SELECT Name FROM Opportunity WHERE {condition}")
        assert answer.status_code == 200, answer.text
        return {r["Name"] for r in answer.json()["records"]}

    assert names("CloseDate = TODAY") == {"today"}
    assert names("CloseDate = YESTERDAY") == {"yesterday"}
    assert names("CloseDate = TOMORROW") == set()
    assert names("CloseDate = LAST_N_DAYS:7") == {"today", "yesterday"}
    assert names("CloseDate = NEXT_N_DAYS:7") == {"today", "in five days"}
    assert names("CloseDate < TODAY") == {"yesterday", "ten days ago"}
    assert names("CloseDate > TODAY") == {"in five days", "next year"}
    assert names(f"CloseDate >= {(today - timedelta(days=1)).isoformat()}") == {
        "today",
        "yesterday",
        "in five days",
        "next year",
    }
    assert names("CloseDate != null AND CloseDate <= NEXT_N_DAYS:10") == {
        "today",
        "yesterday",
        "ten days ago",
        "in five days",
    }
    assert names("CreatedDate = LAST_N_DAYS:1") == set(days) | {"no date"}
    assert names("CloseDate = NEXT_YEAR") <= {"next year"}


def test_query_compares_datetimes_as_instants_whatever_the_offset(sf_sim):
    sf_sim.seed(accounts=0, opportunities=0)
    sf_sim.create("Account", {"Name": "Late", "CreatedDate": "2026-03-01T23:30:00.000+0000"})
    sf_sim.create("Account", {"Name": "Early", "CreatedDate": datetime(2026, 3, 1, 22, 30, tzinfo=UTC)})
    token = bearer(sf_sim)
    query = "SELECT Name, CreatedDate FROM Account WHERE CreatedDate > 2026-03-02T00:00:00+01:00"
    records = soql(sf_sim, token, query).json()["records"]
    assert records == [
        {
            "attributes": records[0]["attributes"],
            "Name": "Late",
            "CreatedDate": "2026-03-01T23:30:00.000+0000",
        }
    ]
    exact = soql(
        sf_sim, token, "SELECT Name FROM Account WHERE CreatedDate = 2026-03-01T22:30:00.000Z"
    ).json()
    assert [r["Name"] for r in exact["records"]] == ["Early"]


def test_query_answers_count_and_ids_in_their_15_character_form(sf_sim):
    token = bearer(sf_sim)
    count = soql(sf_sim, token, "SELECT COUNT() FROM Opportunity WHERE IsClosed = false").json()
    assert count == {
        "totalSize": sum(1 for r in sf_sim.records("Opportunity") if not r["IsClosed"]),
        "done": True,
        "records": [],
    }
    account = sf_sim.records("Account")[3]
    short = soql(sf_sim, token, f"SELECT Id FROM Account WHERE Id IN ('{account['Id'][:15]}')")
    assert ids(short) == [account["Id"]]


QUERY_ERRORS = [
    ("SELECT COUNT(), Id FROM Account", "MALFORMED_QUERY", "COUNT() can't be mixed with fields"),
    ("SELECT Id FROM Opportunity WHERE", "MALFORMED_QUERY", "unexpected token: <EOF>"),
    ("SELECT Id, FROM Opportunity", "MALFORMED_QUERY", "unexpected token: 'FROM'"),
    ("SELECT Id Opportunity", "MALFORMED_QUERY", "unexpected token: 'Opportunity'"),
    (
        "SELECT Id FROM Opportunity WHERE Amount > 1 AND Name = 'x' OR Amount = null",
        "MALFORMED_QUERY",
        "unexpected token: 'OR'",
    ),
    ("SELECT Id FROM Opportunity WHERE Name = 'open", "MALFORMED_QUERY", "unterminated string literal"),
    ('SELECT Id FROM Opportunity WHERE Name = "x"', "MALFORMED_QUERY", "unexpected character: '\"'"),
    ("SELECT Id FROM Opportunity WHERE Name = 'a\\qb'", "MALFORMED_QUERY", "illegal escape sequence '\\q'"),
    (
        "SELECT Id FROM Opportunity WHERE CloseDate = 2026-02-30",
        "MALFORMED_QUERY",
        "invalid date: 2026-02-30",
    ),
    (
        "SELECT Id FROM Opportunity WHERE CreatedDate > 2026-01-01T10:00",
        "MALFORMED_QUERY",
        "invalid datetime",
    ),
    (
        "SELECT Id FROM Opportunity WHERE CloseDate = LAST_N_DAYS",
        "MALFORMED_QUERY",
        "expected ':' and a number",
    ),
    ("SELECT Id FROM Opportunity LIMIT 1.5", "MALFORMED_QUERY", "a whole number after LIMIT"),
    ("SELECT Id, Name, name FROM Opportunity", "MALFORMED_QUERY", "duplicate field selected: name"),
    ("SELECT Id FROM Opportunity LIMIT 5 ORDER BY Name", "MALFORMED_QUERY", "unexpected token: 'ORDER'"),
    ("SELECT Foo FROM Opportunity", "INVALID_FIELD", "No such column 'Foo' on entity 'Opportunity'."),
    ("SELECT Account.Foo FROM Opportunity", "INVALID_FIELD", "No such column 'Foo' on entity 'Account'."),
    (
        "SELECT Id FROM Opportunity WHERE Acount.Name = 'x'",
        "INVALID_FIELD",
        "Didn't understand relationship 'Acount'",
    ),
    ("SELECT AccountId.Name FROM Opportunity", "INVALID_FIELD", "Didn't understand relationship 'AccountId'"),
    ("SELECT Id FROM Planet", "INVALID_TYPE", "sObject type 'Planet' is not supported."),
    (
        "SELECT Id FROM Opportunity WHERE CloseDate > '2026-01-01'",
        "INVALID_FIELD",
        "must be of type date and should not be enclosed in quotes",
    ),
    (
        "SELECT Id FROM Opportunity WHERE CreatedDate > 2026-01-01",
        "INVALID_FIELD",
        "must be of type dateTime",
    ),
    ("SELECT Id FROM Opportunity WHERE Amount = '5'", "INVALID_FIELD", "must be of type double"),
    (
        "SELECT Id FROM Opportunity WHERE Name = 5",
        "INVALID_FIELD",
        "must be of type string and should be enclosed in quotes",
    ),
    (
        "SELECT Id FROM Opportunity WHERE Id = 'nope'",
        "INVALID_QUERY_FILTER_OPERATOR",
        "invalid ID field: nope",
    ),
    (
        "SELECT Id FROM Opportunity WHERE Description = 'x'",
        "INVALID_FIELD",
        "field 'Description' can not be filtered",
    ),
    (
        "SELECT Id FROM Opportunity ORDER BY Description",
        "INVALID_FIELD",
        "field 'Description' can not be sorted",
    ),
    ("SELECT Id FROM Opportunity WHERE Amount LIKE '1%'", "INVALID_FIELD", "invalid operator"),
]


@pytest.mark.parametrize(("query", "code", "message"), QUERY_ERRORS, ids=[q for q, _, _ in QUERY_ERRORS])
def test_query_errors_name_the_problem_and_where_it_is(sf_sim_shared, query, code, message):
    answer = soql(sf_sim_shared, bearer(sf_sim_shared), query)
    assert answer.status_code == 400
    [error] = answer.json()
    assert error["errorCode"] == code
    assert message in error["message"]
    assert "ERROR at Row:1:Column:" in error["message"]


def test_query_error_messages_start_with_the_sentence_and_point_at_the_column(sf_sim):
    error = soql(sf_sim, bearer(sf_sim), "SELECT Id,\n  Foo FROM Opportunity").json()[0]
    assert error["message"].startswith("No such column 'Foo' on entity 'Opportunity'. If you are attempting")
    assert error["message"].endswith("ERROR at Row:2:Column:3\n  Foo FROM Opportunity\n  ^")
    missing = api(sf_sim, bearer(sf_sim), f"{V}/query")
    assert missing.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_query_pages_5000_records_with_locators_and_honours_batch_size(sf_sim):
    started = time.monotonic()
    counts = sf_sim.seed(accounts=100, opportunities=5000)
    assert time.monotonic() - started < 1
    assert counts["Opportunity"] == 5000
    token = bearer(sf_sim)
    query = "SELECT Id, Name, Account.Name, SystemModstamp FROM Opportunity ORDER BY SystemModstamp, Id"
    first = soql(sf_sim, token, query).json()
    assert (first["totalSize"], first["done"], len(first["records"])) == (5000, False, 2000)
    assert re.fullmatch(rf"{V}/query/01g[A-Za-z0-9]{{15}}-2000", first["nextRecordsUrl"])
    sf_sim.touch("Opportunity", ids=[first["records"][0]["Id"]])  # the cursor keeps its snapshot
    sf_sim.create("Opportunity", {"Name": "Late arrival", "StageName": "Prospecting"})
    seen, pages, url = [r["Id"] for r in first["records"]], 1, first["nextRecordsUrl"]
    options = {"Sforce-Query-Options": "batchSize=1000"}
    while url:
        page = api(sf_sim, token, url, headers=options).json()
        assert page["totalSize"] == 5000
        assert len(page["records"]) == 1000
        seen += [r["Id"] for r in page["records"]]
        url, pages = page.get("nextRecordsUrl"), pages + 1
        assert page["done"] is (url is None)
    assert pages == 4
    assert len(set(seen)) == 5000
    assert seen == [r["Id"] for r in sf_sim.records("Opportunity")[:5000]]
    small = soql(sf_sim, token, query, headers={"Sforce-Query-Options": "batchSize=50"}).json()
    assert len(small["records"]) == 200  # Salesforce's minimum batch
    assert small["nextRecordsUrl"].endswith("-200")
    old = api(sf_sim, token, "/services/data/v58.0/query", params={"q": query}).json()
    assert old["nextRecordsUrl"].startswith("/services/data/v58.0/query/01g")


def test_query_more_refuses_an_unknown_or_out_of_range_locator(sf_sim):
    sf_sim.configure(batch_size=25)
    token = bearer(sf_sim)
    first = soql(sf_sim, token, "SELECT Id FROM Opportunity").json()
    assert len(first["records"]) == 25
    locator = first["nextRecordsUrl"].rsplit("/", 1)[1].rsplit("-", 1)[0]
    for bad in ("01gAAAAAAAAAAAAAAA-25", f"{locator}-999", f"{locator}-x", f"{locator}-0"):
        answer = api(sf_sim, token, f"{V}/query/{bad}")
        assert answer.status_code == 400
        assert answer.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


# -- writing -------------------------------------------------------------------------------------


def test_patch_updates_a_record_and_bumps_its_stamps(sf_sim):
    token = bearer(sf_sim)
    before = sf_sim.records("Opportunity")[0]
    account = sf_sim.records("Account")[5]["Id"]
    answer = api(
        sf_sim,
        token,
        f"{V}/sobjects/Opportunity/{before['Id']}",
        method="PATCH",
        json={"Clazar_Opportunity_Id__c": "clz-42", "StageName": "Closed Won", "AccountId": account[:15]},
    )
    assert answer.status_code == 204
    assert answer.content == b""
    after = sf_sim.records("Opportunity")[0]
    assert after["Clazar_Opportunity_Id__c"] == "clz-42"
    assert after["AccountId"] == account  # stored in its 18-character form
    assert (after["IsClosed"], after["IsWon"], after["Probability"]) == (True, True, 100.0)
    assert after["SystemModstamp"] > before["SystemModstamp"]
    assert after["LastModifiedDate"] == after["SystemModstamp"]
    read = api(
        sf_sim, token, f"{V}/sobjects/Opportunity/{before['Id']}?fields=Clazar_Opportunity_Id__c"
    ).json()
    assert read["Clazar_Opportunity_Id__c"] == "clz-42"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"Foo__c": 1}, 400, "INVALID_FIELD"),
        ({"IsClosed": True}, 400, "INVALID_FIELD_FOR_INSERT_UPDATE"),
        ({"Clazar_Opportunity_Id__c": "x" * 65}, 400, "STRING_TOO_LONG"),
        ({"Amount": "lots"}, 400, "JSON_PARSER_ERROR"),
        ({"Name": None}, 400, "REQUIRED_FIELD_MISSING"),
        ({"AccountId": "nope"}, 400, "MALFORMED_ID"),
        ({"AccountId": "001000000009999AAA"}, 400, "INVALID_CROSS_REFERENCE_KEY"),
        (["not", "an", "object"], 400, "JSON_PARSER_ERROR"),
    ],
)
def test_patch_refuses_bad_fields_and_values(sf_sim_shared, body, status, code):
    record = sf_sim_shared.records("Opportunity")[0]
    path = f"{V}/sobjects/Opportunity/{record['Id']}"
    answer = api(sf_sim_shared, bearer(sf_sim_shared), path, method="PATCH", json=body)
    assert answer.status_code == status
    assert answer.json()[0]["errorCode"] == code
    assert sf_sim_shared.records("Opportunity")[0] == record


def test_patch_answers_403_without_edit_permission_and_404_for_an_unknown_id(sf_sim):
    token = bearer(sf_sim)
    record_id = sf_sim.records("Opportunity")[0]["Id"]
    missing = api(
        sf_sim, token, f"{V}/sobjects/Opportunity/006000000009999AAA", method="PATCH", json={"NextStep": "x"}
    )
    assert missing.status_code == 404
    sf_sim.configure(permissions={"Opportunity": {"edit": False}})
    refused = api(
        sf_sim, token, f"{V}/sobjects/Opportunity/{record_id}", method="PATCH", json={"NextStep": "x"}
    )
    assert refused.status_code == 403
    assert refused.json()[0]["errorCode"] == "INSUFFICIENT_ACCESS_OR_READONLY"


def test_touch_changes_records_and_bumps_system_modstamp_strictly(sf_sim):
    before = {r["Id"]: r for r in sf_sim.records("Opportunity")}
    newest = max(r["SystemModstamp"] for r in before.values())
    touched = sf_sim.touch("Opportunity", count=3)
    middle = {r["Id"]: r for r in sf_sim.records("Opportunity")}
    stamps = [middle[i]["SystemModstamp"] for i in touched]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 3
    assert stamps[0] > newest
    first = touched[0]
    assert middle[first]["NextStep"] != before[first]["NextStep"]
    assert middle[first]["Amount"] == (before[first]["Amount"] or 0) + 1000
    assert sf_sim.touch("Opportunity", ids=[first]) == [first]
    after = {r["Id"]: r for r in sf_sim.records("Opportunity")}
    assert after[first]["SystemModstamp"] > stamps[-1]  # touched again, stamped again
    since = newest.replace("+0000", "Z")
    query = f"SELECT Id FROM Opportunity WHERE SystemModstamp > {since} ORDER BY SystemModstamp"
    assert ids(soql(sf_sim, bearer(sf_sim), query)) == [touched[1], touched[2], touched[0]]
    changed = sf_sim.touch("Account", count=1, changes={"Industry": "Energy"})
    assert sf_sim.records("Account")[0]["Industry"] == "Energy"
    assert changed == [sf_sim.records("Account")[0]["Id"]]
    with pytest.raises(ValueError, match="Nope"):
        sf_sim.touch("Opportunity", changes={"Nope": 1})


def test_the_seed_is_deterministic_and_meets_missing_values(sf_sim):
    first = sf_sim.records("Opportunity")
    sf_sim.seed()
    assert sf_sim.records("Opportunity") == first
    assert len(first) == 60
    assert len(sf_sim.records("Account")) == 20
    assert all(len(r["Id"]) == 18 and r["Id"].startswith("006") for r in first)
    assert any(r["CloseDate"] is None for r in first)
    assert any(r["AccountId"] is None for r in first)
    assert any(r["Cloud_Provider__c"] is None for r in first)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000", first[0]["SystemModstamp"])
    assert sf_sim.records("Lead")[0]["Id"].startswith("00Q")
    assert sf_sim.records("Quote")[0]["Id"][:3] == "0Q0"


# -- faults --------------------------------------------------------------------------------------


def test_an_error_fault_answers_a_salesforce_shaped_body_on_the_nth_call(sf_sim):
    sf_sim.add_fault("error", route="describe_global", on_call=2, times=2)
    token = bearer(sf_sim)
    statuses = [api(sf_sim, token, f"{V}/sobjects/").status_code for _ in range(4)]
    assert statuses == [200, 503, 503, 200]
    sf_sim.add_fault("error", route="query", status=500, error_code="UNKNOWN_EXCEPTION", message="boom")
    failed = soql(sf_sim, token, "SELECT Id FROM Account")
    assert failed.status_code == 500
    assert failed.json() == [{"message": "boom", "errorCode": "UNKNOWN_EXCEPTION"}]
    assert [f["fired"] for f in sf_sim.faults()] == [2, 1]


def test_an_error_fault_on_an_oauth_route_answers_an_oauth_body(sf_sim):
    tokens = sf_sim.grant()
    sf_sim.add_fault("error", route="refresh", status=503)
    assert exchange(sf_sim, code_for(sf_sim), None).status_code == 200  # "token" is another route
    failed = token_call(sf_sim, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert failed.status_code == 503
    assert failed.json() == {"error": "temporarily_unavailable", "error_description": "Simulated failure."}
    assert (
        token_call(sf_sim, grant_type="refresh_token", refresh_token=tokens["refresh_token"]).status_code
        == 200
    )


def test_an_unauthorized_fault_answers_401_even_with_a_good_token(sf_sim):
    sf_sim.add_fault("unauthorized", route="query")
    token = bearer(sf_sim)
    refused = soql(sf_sim, token, "SELECT Id FROM Account")
    assert refused.status_code == 401
    assert refused.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    assert soql(sf_sim, token, "SELECT Id FROM Account").status_code == 200


def test_a_latency_fault_slows_only_its_route(sf_sim):
    sf_sim.add_fault("latency", route="describe", seconds=0.3)
    token = bearer(sf_sim)
    started = time.monotonic()
    assert api(sf_sim, token, f"{V}/sobjects/Account/describe").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    api(sf_sim, token, f"{V}/sobjects/")
    assert time.monotonic() - started < 0.3


def test_a_drop_fault_applies_the_update_then_closes_the_socket(sf_sim):
    sf_sim.add_fault("drop", route="update")
    record_id = sf_sim.records("Opportunity")[0]["Id"]
    with pytest.raises(requests.ConnectionError):
        api(
            sf_sim,
            bearer(sf_sim),
            f"{V}/sobjects/Opportunity/{record_id}",
            method="PATCH",
            json={"NextStep": "Dropped"},
        )
    assert sf_sim.records("Opportunity")[0]["NextStep"] == "Dropped"
    assert sf_sim.requests_log(method="PATCH")[-1]["status"] is None
    sf_sim.add_fault("drop", route="update", apply=False)
    with pytest.raises(requests.ConnectionError):
        api(
            sf_sim,
            bearer(sf_sim),
            f"{V}/sobjects/Opportunity/{record_id}",
            method="PATCH",
            json={"NextStep": "Not"},
        )
    assert sf_sim.records("Opportunity")[0]["NextStep"] == "Dropped"


def test_a_hang_fault_sleeps_past_the_read_timeout(sf_sim):
    sf_sim.add_fault("hang", route="token", seconds=3)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            f"{sf_sim.url}/services/oauth2/token",
            data={"grant_type": "authorization_code", "code": "x"},
            timeout=(1, 0.3),
        )
    assert time.monotonic() - started < 1


def test_faults_without_a_route_hit_every_route_and_bad_faults_are_refused(sf_sim):
    sf_sim.add_fault("error", status=502, times=0)
    assert requests.get(authorize_url(sf_sim), timeout=TIMEOUT).status_code == 502
    assert token_call(sf_sim, grant_type="authorization_code").status_code == 502
    assert requests.get(f"{sf_sim.url}/__sim/health", timeout=TIMEOUT).status_code == 200
    with pytest.raises(ValueError, match="kind"):
        sf_sim.add_fault("meltdown")
    with pytest.raises(ValueError, match="route"):
        sf_sim.add_fault("error", route="nowhere")
    url = f"{sf_sim.url}/__sim/faults"
    assert requests.post(url, json=[{"kind": "latency", "seconds": 0}], timeout=TIMEOUT).status_code == 200
    assert [f["kind"] for f in requests.get(url, timeout=TIMEOUT).json()["faults"]] == ["latency"]
    assert requests.delete(url, timeout=TIMEOUT).json() == {"faults": []}


# -- the log, settings and control routes --------------------------------------------------------


def test_the_request_log_masks_secrets_and_skips_control_routes(sf_sim):
    verifier, challenge = pkce()
    code = code_for(sf_sim, challenge)
    tokens = exchange(sf_sim, code, verifier).json()
    token_call(sf_sim, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    soql(sf_sim, tokens["access_token"], "SELECT Id FROM Account LIMIT 1")
    requests.post(
        f"{sf_sim.url}/services/oauth2/revoke", data={"token": tokens["access_token"]}, timeout=TIMEOUT
    )
    requests.get(f"{sf_sim.url}/__sim/health", timeout=TIMEOUT)
    log = requests.get(f"{sf_sim.url}/__sim/requests", timeout=TIMEOUT).json()["requests"]
    assert [(e["method"], e["route"], e["status"]) for e in log] == [
        ("GET", "authorize", 200),
        ("POST", "authorize", 302),
        ("POST", "token", 200),
        ("POST", "refresh", 200),
        ("GET", "query", 200),
        ("POST", "revoke", 200),
    ]
    assert log[2]["form"] == {
        "client_id": DEFAULT_CONSUMER_KEY,
        "client_secret": "***",
        "grant_type": "authorization_code",
        "code": "***",
        "redirect_uri": CALLBACK,
        "code_verifier": "***",
    }
    assert log[3]["form"]["refresh_token"] == "***"
    assert log[4]["headers"]["authorization"] == "Bearer ***"
    assert log[4]["query"] == {"q": "SELECT Id FROM Account LIMIT 1"}
    assert log[5]["form"] == {"token": "***"}
    text = json.dumps(log)
    for secret in (DEFAULT_CONSUMER_SECRET, code, verifier, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in text
    assert sf_sim.requests_log(path="/services/oauth2/token")[0]["id"] == log[2]["id"]
    sf_sim.clear_log()
    assert sf_sim.requests_log() == []


def test_settings_are_checked_and_reset_goes_back_to_the_defaults(sf_sim):
    with pytest.raises(ValueError, match="Unknown simulator setting 'colour'"):
        sf_sim.configure(colour="blue")
    with pytest.raises(ValueError, match="batch_size"):
        sf_sim.configure(batch_size=0)
    with pytest.raises(ValueError, match="Planet"):
        sf_sim.configure(permissions={"Planet": {"read": True}})
    token = bearer(sf_sim)
    sf_sim.configure(org_name="Renamed", batch_size=300)
    sf_sim.touch("Opportunity", count=2)
    sf_sim.add_fault("error")
    sf_sim.reset()
    config = sf_sim.config()
    assert (config["org_name"], config["batch_size"], config["rotate_refresh_tokens"]) == (
        "Acme Inc.",
        2000,
        True,
    )
    assert sf_sim.faults() == []
    assert sf_sim.requests_log() == []
    assert api(sf_sim, token, f"{V}/sobjects/").status_code == 401  # grants forgotten
    fresh = SalesforceSimulator()
    assert sf_sim.records("Opportunity") == fresh.api.records("Opportunity")


def test_control_routes_configure_seed_touch_and_report_health(sf_sim):
    url = f"{sf_sim.url}/__sim"
    assert (
        requests.post(f"{url}/config", json={"batch_size": 300}, timeout=TIMEOUT).json()["batch_size"] == 300
    )
    assert requests.post(f"{url}/config", json={"nope": 1}, timeout=TIMEOUT).status_code == 400
    assert requests.get(f"{url}/config", timeout=TIMEOUT).json()["batch_size"] == 300
    seeded = requests.post(f"{url}/seed", json={"accounts": 2, "opportunities": 5}, timeout=TIMEOUT)
    assert seeded.status_code == 201
    assert seeded.json()["Opportunity"] == 5
    touched = requests.post(
        f"{url}/touch", json={"object": "Opportunity", "count": 2}, timeout=TIMEOUT
    ).json()
    assert len(touched["ids"]) == 2
    assert requests.post(f"{url}/touch", json={"object": "Planet"}, timeout=TIMEOUT).status_code == 400
    health = requests.get(f"{url}/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok"
    assert health["records"]["Account"] == 2
    token = requests.post(f"{url}/grant", json={}, timeout=TIMEOUT).json()["access_token"]
    assert requests.post(f"{url}/tokens/expire", timeout=TIMEOUT).status_code == 200
    assert api(sf_sim, token, f"{V}/sobjects/").status_code == 401
    assert requests.post(f"{url}/reset", timeout=TIMEOUT).status_code == 200
    assert len(sf_sim.records("Opportunity")) == 60
    assert requests.get(f"{url}/nothing", timeout=TIMEOUT).status_code == 404


def test_the_shared_simulator_starts_each_test_clean(sf_sim_shared):
    assert sf_sim_shared.running
    assert sf_sim_shared.requests_log() == []
    assert sf_sim_shared.faults() == []
    assert len(sf_sim_shared.records("Opportunity")) == 60


def test_it_answers_concurrent_clients_while_records_change(sf_sim):
    token = bearer(sf_sim)
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def client(n: int) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            start.wait()
            for i in range(5):
                if n % 4 == 0:
                    sf_sim.touch("Opportunity", count=2)
                answer = session.get(
                    f"{sf_sim.url}{V}/query",
                    params={"q": f"SELECT Id, Account.Name FROM Opportunity WHERE Amount > {i * 1000}"},
                    timeout=TIMEOUT,
                )
                with lock:
                    statuses.append(answer.status_code)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses == [200] * 100
    stamps = [r["SystemModstamp"] for r in sf_sim.records("Opportunity")]
    assert len(set(stamps)) == len(stamps)


# -- the parser on its own -----------------------------------------------------------------------


def soql_string(text: str) -> str:
    escapes = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "'" + "".join(escapes.get(c, c) for c in text) + "'"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="SELECTFROMWHERANDIKLMT Idam()=<>!',.:%_-0123456789\\\"\n", max_size=80))
def test_the_parser_answers_any_text_with_a_result_or_a_query_error(text):
    data = {name: {} for name in SCHEMA}
    try:
        execute(text, data, set(SCHEMA), "v62.0", date(2026, 1, 31))
    except SoqlError as exc:
        assert exc.code in (
            "MALFORMED_QUERY",
            "INVALID_FIELD",
            "INVALID_TYPE",
            "INVALID_QUERY_FILTER_OPERATOR",
        )
        assert exc.render(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_escaped_string_literals_match_exactly(name):
    record = {"Id": "001000000000001AAA", "Name": name}
    data = {n: {} for n in SCHEMA}
    data["Account"] = {record["Id"]: record}
    found = execute(f"SELECT Name FROM Account WHERE Name = {soql_string(name)}", data, set(SCHEMA), "v62.0")
    assert [r["Name"] for r in found.records] == [name]


# -- running it ----------------------------------------------------------------------------------


def test_it_runs_in_the_foreground_from_the_command_line():
    process = subprocess.Popen(
        [sys.executable, "-m", "clazar_dest.simulators.salesforce", "--port", "0", "--opportunities", "7"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("Salesforce simulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert requests.get(f"{url}/__sim/health", timeout=TIMEOUT).json()["records"]["Opportunity"] == 7
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
