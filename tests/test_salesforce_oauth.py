"""Salesforce OAuth: the authorization URL, the callback, address checks (pure), then the whole web
server flow, refresh, revoke and identity against the Salesforce simulator over sockets."""

from __future__ import annotations

import base64
import hashlib
import logging
import pickle
import re
import socket
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from clazar_dest.salesforce import oauth
from clazar_dest.salesforce.client import SalesforceUnavailable, SessionExpired
from clazar_dest.salesforce.oauth import CallbackError, InvalidGrant, OAuthError
from clazar_dest.simulators.salesforce import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    SalesforceSimulator,
)

CALLBACK = "https://clazar.example.com/salesforce/callback"
SIM = "http://127.0.0.1:8123"


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


# -- login hosts and the authorization URL -------------------------------------------------------------


def test_login_base_knows_the_three_environments_and_a_simulator_wins():
    assert oauth.login_base("production") == "https://login.salesforce.com"
    assert oauth.login_base("sandbox") == "https://test.salesforce.com"
    assert oauth.login_base("developer") == "https://login.salesforce.com"
    assert oauth.login_base("sandbox", simulator_url=SIM + "/") == SIM


def test_login_base_refuses_an_unknown_environment():
    with pytest.raises(ValueError, match="production, sandbox or developer"):
        oauth.login_base("staging")


def test_start_asks_for_a_code_with_api_and_refresh_scopes_and_an_s256_challenge():
    auth = oauth.start("CONSUMER-KEY", CALLBACK, "https://login.salesforce.com")
    parts = urlsplit(auth.url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "login.salesforce.com",
        "/services/oauth2/authorize",
    )
    params = query_of(auth.url)
    assert params["response_type"] == "code"
    assert params["client_id"] == "CONSUMER-KEY"
    assert params["redirect_uri"] == CALLBACK
    assert params["scope"] == "api refresh_token"
    assert params["state"] == auth.state
    assert params["code_challenge_method"] == "S256"
    digest = hashlib.sha256(auth.code_verifier.encode()).digest()
    assert params["code_challenge"] == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert 43 <= len(auth.code_verifier) <= 128
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", auth.code_verifier)
    assert auth.code_verifier not in auth.url


def test_start_makes_a_fresh_state_and_verifier_each_time():
    first = oauth.start("KEY", CALLBACK, "https://login.salesforce.com")
    second = oauth.start("KEY", CALLBACK, "https://login.salesforce.com")
    assert first.state != second.state
    assert first.code_verifier != second.code_verifier
    assert len(first.state) >= 20


def test_start_keeps_a_simulators_http_address():
    auth = oauth.start("KEY", CALLBACK, SIM + "/")
    assert auth.url.startswith(SIM + "/services/oauth2/authorize?")


def test_start_refuses_a_login_base_that_is_not_a_url():
    with pytest.raises(ValueError, match="must start with https://"):
        oauth.start("KEY", CALLBACK, "login.salesforce.com")


def test_authorization_repr_hides_the_verifier():
    auth = oauth.start("KEY", CALLBACK, "https://login.salesforce.com")
    assert auth.code_verifier not in repr(auth)


# -- the callback --------------------------------------------------------------------------------------


def test_read_callback_returns_the_code_when_the_state_matches():
    assert oauth.read_callback({"code": "aPrx.code", "state": "s1"}, "s1") == "aPrx.code"


@pytest.mark.parametrize(
    ("params", "expected", "kind", "words"),
    [
        ({"code": "c", "state": "s1"}, None, "missing_state", "start connecting again"),
        ({"code": "c", "state": "s1"}, "", "missing_state", "session expired"),
        ({"code": "c"}, "s1", "state_mismatch", "does not match"),
        ({"code": "c", "state": "s2"}, "s1", "state_mismatch", "does not match"),
        ({"code": "c", "state": "s1x"}, "s1", "state_mismatch", "does not match"),
        ({"code": "c", "state": "é"}, "s1", "state_mismatch", "does not match"),
        (
            {"error": "access_denied", "error_description": "end-user denied authorization", "state": "s1"},
            "s1",
            "access_denied",
            "chose Deny",
        ),
        ({"error": "invalid_scope", "state": "s1"}, "s1", "invalid_scope", "did not authorize"),
        ({"error": "<script>", "state": "s1"}, "s1", "error", "did not authorize"),
        ({"state": "s1"}, "s1", "missing_code", "without an authorization code"),
        ({"state": "s1", "code": ""}, "s1", "missing_code", "without an authorization code"),
    ],
)
def test_read_callback_refuses_what_it_cannot_use(params, expected, kind, words):
    with pytest.raises(CallbackError) as caught:
        oauth.read_callback(params, expected)
    assert caught.value.kind == kind
    assert words in str(caught.value)


def test_a_denied_callback_says_what_salesforce_said():
    params = {"error": "access_denied", "error_description": "end-user denied authorization", "state": "s"}
    with pytest.raises(CallbackError) as caught:
        oauth.read_callback(params, "s")
    assert str(caught.value).startswith("You (or the Salesforce user) chose Deny")
    assert "end-user denied authorization" in str(caught.value)


def test_a_forged_error_with_the_wrong_state_is_a_state_mismatch():
    with pytest.raises(CallbackError) as caught:
        oauth.read_callback({"error": "access_denied", "state": "forged"}, "s1")
    assert caught.value.kind == "state_mismatch"


# -- instance and identity URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://acme.my.salesforce.com", "https://acme.my.salesforce.com"),
        ("https://acme.my.salesforce.com/", "https://acme.my.salesforce.com"),
        ("HTTPS://Acme.My.SalesForce.com", "https://acme.my.salesforce.com"),
        ("https://na1.salesforce.com:443", "https://na1.salesforce.com"),
        ("https://acme--uat.sandbox.my.salesforce.com", "https://acme--uat.sandbox.my.salesforce.com"),
        ("https://acme.lightning.force.com", "https://acme.lightning.force.com"),
        ("https://acme.cloudforce.com", "https://acme.cloudforce.com"),
        ("https://acme.database.com", "https://acme.database.com"),
        ("https://acme.my.salesforce-setup.com", "https://acme.my.salesforce-setup.com"),
        ("https://salesforce.com", "https://salesforce.com"),
    ],
)
def test_check_instance_url_accepts_salesforce_origins(url, origin):
    assert oauth.check_instance_url(url) == origin


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://acme.my.salesforce.com", "does not use https"),
        ("https://evil.com#.salesforce.com", "query or a fragment"),
        ("https://evil.com?.salesforce.com", "query or a fragment"),
        ("https://acme.my.salesforce.com/?x=1", "query or a fragment"),
        ("https://x.salesforce.com.evil.com", "not on a Salesforce domain"),
        ("https://evilsalesforce.com", "not on a Salesforce domain"),
        ("https://salesforce.com.", "not on a Salesforce domain"),
        ("https://user:pw@acme.my.salesforce.com", "user name"),
        ("https://acme.my.salesforce.com@evil.com", "user name"),
        ("https://evil.com\\.salesforce.com", "backslash"),
        ("https://evil.com\\@acme.salesforce.com", "backslash"),
        ("https://acme.my.salesforce.com /", "space"),
        ("https://acme.my.salesforce.com\n", "control character"),
        ("https://1.2.3.4", "numeric IP"),
        ("https://[::1]", "numeric IP"),
        ("https://acme.my.salesforce.com:8443", "port 8443"),
        ("https://acme.my.salesforce.com:99999", "can't be parsed"),
        ("https://acme.my.salesforce.com/services/data", "has a path"),
        ("https://ac%6De.salesforce.com", "not on a Salesforce domain"),
        ("https://acmé.salesforce.com", "not on a Salesforce domain"),
        ("//acme.my.salesforce.com", "does not use https"),
        ("javascript:alert(1)", "does not use https"),
        ("https:///acme.my.salesforce.com", "not on a Salesforce domain"),
        (SIM, "does not use https"),
    ],
)
def test_check_instance_url_refuses_tricks(url, reason):
    with pytest.raises(ValueError, match=r"is not a Salesforce address|has a path") as caught:
        oauth.check_instance_url(url)
    assert reason in str(caught.value)


@pytest.mark.parametrize("url", ["", None, "   "])
def test_check_instance_url_says_when_nothing_was_sent(url):
    with pytest.raises(ValueError, match="Salesforce sent no instance URL"):
        oauth.check_instance_url(url)


def test_check_instance_url_accepts_exactly_the_extra_origins():
    assert oauth.check_instance_url(SIM, extra_origins=[SIM + "/"]) == SIM
    assert oauth.check_instance_url(SIM + "/", extra_origins=[SIM]) == SIM
    for other in ("http://127.0.0.1:8124", "https://127.0.0.1:8123", "http://127.0.0.2:8123"):
        with pytest.raises(ValueError):
            oauth.check_instance_url(other, extra_origins=[SIM])
    with pytest.raises(ValueError, match="has a path"):
        oauth.check_instance_url(SIM + "/x", extra_origins=[SIM])


ORG, USER = "00D000000000001AAA", "005000000000001AAA"


@pytest.mark.parametrize(
    "url",
    [
        f"https://login.salesforce.com/id/{ORG}/{USER}",
        f"https://test.salesforce.com/id/{ORG[:15]}/{USER[:15]}",
        f"https://acme.my.salesforce.com/id/{ORG}/{USER}/",
    ],
)
def test_check_identity_url_accepts_id_paths_on_salesforce(url):
    assert oauth.check_identity_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        f"https://login.salesforce.com/id/{ORG}",
        f"https://login.salesforce.com/id/{ORG}/{USER}/extra",
        f"https://login.salesforce.com/services/data/{ORG}/{USER}",
        f"https://login.salesforce.com/id/{ORG}/{USER}?oauth_token=x",
        f"https://login.salesforce.com/id/../{ORG}/{USER}",
        f"https://evil.com/id/{ORG}/{USER}",
        f"http://login.salesforce.com/id/{ORG}/{USER}",
        f"https://login.salesforce.com.evil.com/id/{ORG}/{USER}",
    ],
)
def test_check_identity_url_refuses_other_paths_and_hosts(url):
    with pytest.raises(ValueError):
        oauth.check_identity_url(url)


def test_check_identity_url_accepts_the_simulator_when_allowed():
    url = f"{SIM}/id/{ORG}/{USER}"
    assert oauth.check_identity_url(url, extra_origins=[SIM]) == url
    with pytest.raises(ValueError):
        oauth.check_identity_url(url)


# -- errors --------------------------------------------------------------------------------------------


def test_oauth_errors_say_what_to_do():
    assert str(OAuthError("invalid_client", "invalid client credentials")).startswith(
        "Salesforce rejected the consumer key or secret: check the connected app settings"
    )
    mismatch = str(OAuthError("redirect_uri_mismatch", "x", redirect_uri=CALLBACK))
    assert CALLBACK in mismatch
    assert "Callback URL" in mismatch
    assert "reconnect Salesforce" in str(InvalidGrant("invalid_grant", "expired access/refresh token"))
    assert "code verifier" in str(InvalidGrant("invalid_grant", "invalid code verifier"))
    assert "already used" in str(InvalidGrant("invalid_grant", "invalid authorization code"))
    assert "weird_error" in str(OAuthError("weird_error", "something"))
    assert isinstance(InvalidGrant("invalid_grant"), OAuthError)


def test_errors_survive_pickling():
    for error in (InvalidGrant("invalid_grant", "d"), CallbackError("state_mismatch", "m")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)


def test_tokens_repr_hides_the_tokens():
    tokens = oauth.Tokens(
        access_token="00Dxx!ACCESS",
        refresh_token="5Aep-REFRESH",
        instance_url="https://acme.my.salesforce.com",
        id_url=f"https://login.salesforce.com/id/{ORG}/{USER}",
        scope="api refresh_token",
        issued_at=None,
    )
    assert "ACCESS" not in repr(tokens)
    assert "REFRESH" not in repr(tokens)


# -- against the simulator -----------------------------------------------------------------------------

KEY, SECRET = DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET


def connect(sim: SalesforceSimulator, redirect_uri: str = CALLBACK) -> oauth.Tokens:
    """The whole web server flow: authorize URL, a click on Allow, the callback, the code exchange."""
    auth = oauth.start(KEY, redirect_uri, sim.url)
    code = oauth.read_callback(query_of(sim.approve(auth.url)), auth.state)
    return oauth.exchange(sim.url, KEY, SECRET, redirect_uri, code, auth.code_verifier, timeout=(2, 5))


def approved(sim: SalesforceSimulator) -> tuple[oauth.Authorization, str]:
    auth = oauth.start(KEY, CALLBACK, sim.url)
    return auth, oauth.read_callback(query_of(sim.approve(auth.url)), auth.state)


def secrets_of(*tokens: oauth.Tokens) -> list[str]:
    found = [SECRET]
    for token in tokens:
        found += [token.access_token, *([token.refresh_token] if token.refresh_token else [])]
    return found


def test_the_web_server_flow_completes_against_the_simulator(sf_sim_shared):
    sim = sf_sim_shared
    auth = oauth.start(KEY, CALLBACK, sim.url)
    location = sim.approve(auth.url)
    assert location.startswith(CALLBACK + "?")
    code = oauth.read_callback(query_of(location), auth.state)
    tokens = oauth.exchange(sim.url, KEY, SECRET, CALLBACK, code, auth.code_verifier)

    assert tokens.access_token and tokens.refresh_token
    assert oauth.check_instance_url(tokens.instance_url, extra_origins=[sim.url]) == sim.url
    assert oauth.check_identity_url(tokens.id_url, extra_origins=[sim.url]) == tokens.id_url
    assert tokens.scope == "api refresh_token"
    assert tokens.issued_at is not None
    assert abs((tokens.issued_at - datetime.now(UTC)).total_seconds()) < 60
    (asked,) = sim.requests_log(path="/services/oauth2/authorize")
    assert asked["query"]["code_challenge_method"] == "S256"
    assert asked["query"]["scope"] == "api refresh_token"
    (sent,) = sim.requests_log(method="POST", path="/services/oauth2/token")
    assert sent["form"]["grant_type"] == "authorization_code"
    assert sent["form"]["code_verifier"] == "***"  # sent (the simulator masks it in its log)


def test_a_denied_consent_comes_back_as_access_denied(sf_sim_shared):
    auth = oauth.start(KEY, CALLBACK, sf_sim_shared.url)
    location = sf_sim_shared.deny(auth.url)
    with pytest.raises(CallbackError) as caught:
        oauth.read_callback(query_of(location), auth.state)
    assert caught.value.kind == "access_denied"
    assert "chose Deny" in str(caught.value)


def test_a_wrong_code_verifier_is_an_invalid_grant(sf_sim_shared):
    _auth, code = approved(sf_sim_shared)
    other = oauth.start(KEY, CALLBACK, sf_sim_shared.url).code_verifier
    with pytest.raises(InvalidGrant) as caught:
        oauth.exchange(sf_sim_shared.url, KEY, SECRET, CALLBACK, code, other)
    assert caught.value.error == "invalid_grant"
    assert "code verifier" in str(caught.value)
    assert other not in str(caught.value)
    assert code not in str(caught.value)


def test_a_code_works_only_once(sf_sim_shared):
    auth, code = approved(sf_sim_shared)
    oauth.exchange(sf_sim_shared.url, KEY, SECRET, CALLBACK, code, auth.code_verifier)
    with pytest.raises(InvalidGrant, match="already used"):
        oauth.exchange(sf_sim_shared.url, KEY, SECRET, CALLBACK, code, auth.code_verifier)


def test_a_wrong_secret_says_to_check_the_connected_app(sf_sim_shared):
    auth, code = approved(sf_sim_shared)
    with pytest.raises(OAuthError) as caught:
        oauth.exchange(sf_sim_shared.url, KEY, "not-the-secret", CALLBACK, code, auth.code_verifier)
    assert caught.value.error == "invalid_client"
    assert not isinstance(caught.value, InvalidGrant)
    assert str(caught.value).startswith(
        "Salesforce rejected the consumer key or secret: check the connected app settings"
    )
    assert "not-the-secret" not in str(caught.value)


def test_a_different_redirect_uri_at_the_exchange_names_the_callback_url(sf_sim_shared):
    auth, code = approved(sf_sim_shared)
    other = "https://clazar.example.com/other/callback"
    with pytest.raises(OAuthError) as caught:
        oauth.exchange(sf_sim_shared.url, KEY, SECRET, other, code, auth.code_verifier)
    assert caught.value.error == "redirect_uri_mismatch"
    assert other in str(caught.value)


def test_an_unregistered_callback_url_stops_at_the_consent_page(sf_sim_shared):
    sf_sim_shared.configure(callback_urls=["https://clazar.example.com/registered"])
    with pytest.raises(RuntimeError, match="redirect_uri_mismatch"):
        sf_sim_shared.approve(oauth.start(KEY, CALLBACK, sf_sim_shared.url).url)


def test_refresh_rotates_the_refresh_token_and_the_old_one_stops_working(sf_sim_shared):
    sim = sf_sim_shared
    first = connect(sim)
    second = oauth.refresh(sim.url, KEY, SECRET, first.refresh_token)
    assert second.refresh_token and second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    assert second.instance_url == sim.url
    with pytest.raises(InvalidGrant) as caught:
        oauth.refresh(sim.url, KEY, SECRET, first.refresh_token)
    assert "reconnect Salesforce" in str(caught.value)
    third = oauth.refresh(sim.url, KEY, SECRET, second.refresh_token)
    for text in (str(caught.value), repr(third)):
        assert not any(secret in text for secret in secrets_of(first, second, third))


def test_refresh_without_rotation_gives_no_refresh_token_and_the_old_one_keeps_working(sf_sim_shared):
    sim = sf_sim_shared
    sim.configure(rotate_refresh_tokens=False)
    first = connect(sim)
    second = oauth.refresh(sim.url, KEY, SECRET, first.refresh_token)
    assert second.refresh_token is None
    third = oauth.refresh(sim.url, KEY, SECRET, first.refresh_token)
    assert third.access_token not in (first.access_token, second.access_token)


def test_refresh_with_a_wrong_secret_is_invalid_client(sf_sim_shared):
    first = connect(sf_sim_shared)
    with pytest.raises(OAuthError) as caught:
        oauth.refresh(sf_sim_shared.url, KEY, "wrong", first.refresh_token)
    assert caught.value.error == "invalid_client"
    assert first.refresh_token not in str(caught.value)


def test_revoke_ends_the_whole_grant(sf_sim_shared):
    sim = sf_sim_shared
    tokens = connect(sim)
    oauth.revoke(sim.url, tokens.access_token)
    with pytest.raises(InvalidGrant):
        oauth.refresh(sim.url, KEY, SECRET, tokens.refresh_token)
    with pytest.raises(SessionExpired):
        oauth.identity(tokens.id_url, tokens.access_token)
    with pytest.raises(OAuthError) as caught:
        oauth.revoke(sim.url, tokens.refresh_token)
    assert caught.value.error == "unsupported_token_type"
    assert "already be revoked" in str(caught.value)
    assert tokens.refresh_token not in str(caught.value)


def test_identity_names_the_org_and_user(sf_sim_shared):
    tokens = connect(sf_sim_shared)
    who = oauth.identity(tokens.id_url, tokens.access_token)
    config = sf_sim_shared.config()
    assert who == oauth.Identity(
        org_id=config["org_id"],
        user_id=config["user_id"],
        username="integration@acme.example",
        display_name=config["display_name"],
        email=who.email,
    )
    assert "@" in who.email
    with pytest.raises(SessionExpired) as caught:
        oauth.identity(tokens.id_url, tokens.access_token + "x")
    assert tokens.access_token not in str(caught.value)


def test_a_tampered_instance_url_is_caught_by_the_check(sf_sim_shared):
    sf_sim_shared.configure(tamper_instance_url="https://acme.my.salesforce.com.evil.example")
    tokens = connect(sf_sim_shared)
    with pytest.raises(ValueError, match="not on a Salesforce domain"):
        oauth.check_instance_url(tokens.instance_url, extra_origins=[sf_sim_shared.url])


def test_a_server_error_at_the_token_endpoint_is_unavailable(sf_sim_shared):
    auth, code = approved(sf_sim_shared)
    sf_sim_shared.add_fault("error", route="token", status=503)
    with pytest.raises(SalesforceUnavailable, match=r"server error \(HTTP 503") as caught:
        oauth.exchange(sf_sim_shared.url, KEY, SECRET, CALLBACK, code, auth.code_verifier)
    assert code not in str(caught.value)


def test_a_hanging_token_endpoint_times_out(sf_sim):
    """On a simulator of its own: stopping it ends the hanging handler, which could log into a later test."""
    first = connect(sf_sim)
    sf_sim.add_fault("hang", route="refresh", seconds=3)
    with pytest.raises(SalesforceUnavailable, match=r"did not answer the token refresh within 0.5 s"):
        oauth.refresh(sf_sim.url, KEY, SECRET, first.refresh_token, timeout=(2, 0.5))


def test_a_dropped_connection_is_unavailable(sf_sim_shared):
    first = connect(sf_sim_shared)
    sf_sim_shared.add_fault("drop", route="identity")
    with pytest.raises(SalesforceUnavailable):
        oauth.identity(first.id_url, first.access_token)


def test_a_closed_port_is_unavailable_with_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SalesforceUnavailable, match="connection refused"):
        oauth.refresh(f"http://127.0.0.1:{port}", KEY, SECRET, "5Aep-refresh", timeout=(2, 2))


def test_no_token_or_secret_is_logged_during_a_whole_connection(sf_sim_shared, caplog):
    caplog.set_level(logging.DEBUG)
    tokens = connect(sf_sim_shared)
    renewed = oauth.refresh(sf_sim_shared.url, KEY, SECRET, tokens.refresh_token)
    oauth.identity(renewed.id_url, renewed.access_token)
    with pytest.raises(InvalidGrant):
        oauth.refresh(sf_sim_shared.url, KEY, SECRET, tokens.refresh_token)
    oauth.revoke(sf_sim_shared.url, renewed.refresh_token)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "salesforce" in logged
    for secret in secrets_of(tokens, renewed):
        assert secret not in logged
