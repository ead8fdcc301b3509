"""clazar_dest.clazar.transport against the Clazar simulator and tiny misbehaving servers, over real sockets.

Requests are built by hand here (flows.payloads is written separately); the outcome of each answer is
checked through flows.outcomes.classify, the way the engine will use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from clazar_dest.clazar import endpoints, transport
from clazar_dest.clazar.spec import RequestSpec
from clazar_dest.simulators.clazar import ClazarSimulator
from flows.delivery import engine
from flows.outcomes import classify

FAST = {"connect_timeout": 1.0, "read_timeout": 2.0, "deadline": 4.0}
LISTING = {"name": "Data Platform", "cloud": "aws"}
OPPORTUNITY = {"title": "Acme expansion", "cloud": "gcp", "customer_company": "Acme"}


def spec_for(base: str, key: str, body: object | None, object_id: str | None = None) -> RequestSpec:
    endpoint = endpoints.get(key)
    return RequestSpec(
        method=endpoint.method,
        url=base + endpoint.path_for(object_id),
        body=None if body is None else json.dumps(body).encode(),
        seqs=(1,),
        target_id=object_id or "",
        endpoint=key,
    )


# Every test sends with the blocking transport (``transport.send``) and again with its asyncio twin
# (``transport.asend``, what the deliver loop uses), on the deliver run's loop (uvloop's) and on asyncio's
# own (where uvloop is not installed): the same answers, the same error kinds.
_mode: dict = {"name": "blocking", "loop": None}
blocking_only = pytest.mark.parametrize("transport_mode", ["blocking"], indirect=True)


@pytest.fixture(autouse=True, params=["blocking", "uvloop", "asyncio"])
def transport_mode(request) -> Iterator[str]:
    """For asend, one event loop for the whole test (kept-alive connections live on it), running in a
    thread of its own as a deliver run's does (so it runs all the time, and whatever the test's thread
    has: the browser tests' Playwright leaves a loop on the main thread)."""
    _mode["name"] = "blocking" if request.param == "blocking" else "asyncio"
    loop = engine.new_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    _mode["loop"] = loop
    try:
        yield request.param
    finally:
        _mode["name"], _mode["loop"] = "blocking", None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def new_session():
    return transport.AsyncSession() if _mode["name"] == "asyncio" else transport.new_session()


def send(spec: RequestSpec, token: str, **overrides):
    options = {"session": overrides.pop("session", None) or new_session(), "idempotency_key": None, **FAST}
    options.update(overrides)
    if _mode["name"] == "asyncio":
        return asyncio.run_coroutine_threadsafe(
            transport.asend(spec, token, **options), _mode["loop"]
        ).result(60)
    return transport.send(spec, token, **options)


def outcome_of(result: transport.AttemptResult, spec: RequestSpec, attempt: int = 1):
    endpoint = endpoints.get(spec.endpoint) if spec.endpoint else None
    return classify(
        method=spec.method,
        creates_or_publishes=bool(endpoint and endpoint.action in ("create", "publish")),
        error_kind=result.error_kind,
        status=result.status,
        headers=result.headers,
        body_json=result.json,
        attempt=attempt,
        now=datetime.now(UTC),
        target_id=spec.target_id or None,
        resource_label=endpoint.label.split(" ", 1)[1].capitalize() if endpoint else None,
        error=result.error,
    )


@pytest.fixture
def sim(clazar_sim: ClazarSimulator) -> ClazarSimulator:
    return clazar_sim


@pytest.fixture
def token(sim: ClazarSimulator) -> str:
    return sim.issue_token()


def seed_offer(sim: ClazarSimulator, **fields) -> dict:
    listing = sim.seed(listings=[LISTING])["listings"][0]
    offer = {"name": "Acme 3y", "listing": listing["id"], "buyer": "1234", **fields}
    return sim.seed(private_offers=[offer])["private_offers"][0]


class TinyServer:
    """A loopback TCP server running ``handle(conn)`` per connection; counts connections."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.handle = handle
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handle(conn)

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()


@pytest.fixture
def tiny() -> Iterator[Callable[[Callable[[socket.socket], None]], TinyServer]]:
    servers: list[TinyServer] = []

    def start(handle: Callable[[socket.socket], None]) -> TinyServer:
        servers.append(TinyServer(handle))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# -- the eight templates -------------------------------------------------------------------------------

CASES = {
    # key: (valid body, invalid body, expected message for the invalid one)
    "create_listing": (
        LISTING,
        {"cloud": "mars"},
        'Clazar rejected the record: name: This field is required.; cloud: "mars" is not a valid choice.',
    ),
    "update_listing": (
        {"name": "Data Platform 2"},
        {"cloud": "mars"},
        'Clazar rejected the record: cloud: "mars" is not a valid choice.',
    ),
    "create_opportunity": (
        OPPORTUNITY,
        {"title": " ", "cloud": "gcp"},
        "Clazar rejected the record: title: This field may not be blank.; "
        "customer_company: This field is required.",
    ),
    "update_opportunity": (
        {"customer_company": "Acme Corp"},
        {"title": None},
        "Clazar rejected the record: title: This field may not be null.",
    ),
    "create_private_offer": (
        None,  # needs a listing id: filled in below
        {"name": "Acme 3y"},
        "Clazar rejected the record: listing: This field is required.; buyer: This field is required.",
    ),
    "update_private_offer": (
        {"name": "Acme 2y"},
        {"buyer": ""},
        "Clazar rejected the record: buyer: This field may not be blank.",
    ),
    "publish_private_offer": ({}, {}, "Clazar rejected the record: Only draft offers can be published."),
    "delete_private_offer": (None, None, "Private offer {id} was not found in Clazar."),
}


def prepare(sim: ClazarSimulator, key: str, valid: bool) -> tuple[RequestSpec, str | None]:
    """The spec for one template case, with the objects it needs seeded."""
    good, bad, _ = CASES[key]
    body = good if valid else bad
    endpoint = endpoints.get(key)
    object_id = None
    if key == "create_private_offer" and valid:
        listing = sim.seed(listings=[LISTING])["listings"][0]
        body = {"name": "Acme 3y", "listing": listing["id"], "buyer": "1234"}
    if endpoint.id_param:
        resource = endpoint.resource
        if resource == "private_offers":
            published = key == "publish_private_offer" and not valid
            object_id = seed_offer(sim, **({"status": "published"} if published else {}))["id"]
        else:
            seed = {"listings": LISTING, "opportunities": OPPORTUNITY}[resource]
            object_id = sim.seed({resource: [seed]})[resource][0]["id"]
        if key == "delete_private_offer" and not valid:
            object_id = "3f2a0000-0000-4000-8000-000000000000"
    return spec_for(sim.url, key, body if endpoint.has_body else None, object_id), object_id


@pytest.mark.parametrize("key", [e.key for e in endpoints.ENDPOINTS])
def test_every_template_succeeds_with_a_valid_record(sim, token, key):
    spec, object_id = prepare(sim, key, valid=True)
    result = send(spec, token)
    outcome = outcome_of(result, spec)
    assert result.error_kind is None, result.error
    assert outcome.action == "done", outcome.message
    if endpoints.get(key).creates:
        assert result.status == 201
        assert outcome.created_id in {o["id"] for o in sim.objects(endpoints.get(key).resource)}
    if key == "publish_private_offer":
        assert [o["status"] for o in sim.objects("private_offers") if o["id"] == object_id] == ["published"]
    if key == "delete_private_offer":
        assert result.status == 204
        assert object_id not in {o["id"] for o in sim.objects("private_offers")}


@pytest.mark.parametrize("key", [e.key for e in endpoints.ENDPOINTS])
def test_every_template_fails_with_a_clear_message_for_an_invalid_record(sim, token, key):
    spec, object_id = prepare(sim, key, valid=False)
    result = send(spec, token)
    outcome = outcome_of(result, spec)
    assert result.status in (400, 404)
    assert outcome.action == "permanent"
    assert outcome.message.startswith(CASES[key][2].format(id=object_id)), outcome.message
    assert not outcome.counts_for_breaker


# -- headers -------------------------------------------------------------------------------------------


def test_it_sends_its_own_headers_and_extra_headers_can_not_override_them(sim, token):
    spec = RequestSpec(
        "POST",
        f"{sim.url}/listings/",
        json.dumps(LISTING).encode(),
        (1,),
        headers=(("Authorization", "Bearer stolen"), ("content-type", "text/plain"), ("X-Trace", "t-1")),
    )
    result = send(spec, token)
    assert result.status == 201
    sent = sim.requests_log(path="/listings/")[0]["headers"]
    assert sent["content-type"] == "application/json"
    assert sent["accept"] == "application/json"
    assert sent["user-agent"] == transport.USER_AGENT
    assert transport.USER_AGENT.startswith("clazar-dest/")
    assert sent["x-trace"] == "t-1"
    assert "idempotency-key" not in sent


def test_the_idempotency_key_is_sent_only_when_given(sim, token):
    spec = spec_for(sim.url, "create_listing", LISTING)
    send(spec, token, idempotency_key="delivery-41")
    send(spec, token, idempotency_key=None)
    first, second = sim.requests_log(path="/listings/")
    assert first["headers"]["idempotency-key"] == "delivery-41"
    assert "idempotency-key" not in second["headers"]


def test_a_delete_sends_no_content_type(sim, token):
    spec = spec_for(sim.url, "delete_private_offer", None, seed_offer(sim)["id"])
    send(spec, token)
    assert "content-type" not in sim.requests_log(method="DELETE")[0]["headers"]


def test_the_authorization_header_is_never_kept_unredacted(sim, token):
    result = send(spec_for(sim.url, "create_listing", LISTING), token)
    assert result.status == 201
    assert result.request_headers["Authorization"] == "Bearer ****"
    assert token not in repr(result)
    assert token not in json.dumps(result.request_headers)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://api.clazar.io/listings/", "is not an http(s) URL"),
        ("http:///listings/", "is not an http(s) URL"),
        ("http://127.0.0.1:99999/listings/", "is not a valid URL (Port out of range"),
        ("http://127.0.0.1:x/listings/", "is not a valid URL"),
        ("http://[::1/listings/", "is not a valid URL"),
    ],
)
def test_a_url_that_cannot_be_sent_is_refused_with_a_reason_and_nothing_is_sent(token, url, says):
    for _ in range(2):  # the second time from the per-URL cache: the same answer
        result = send(RequestSpec("POST", url, b"{}", (1,)), token)
        assert (result.error_kind, result.status, result.sent) == ("invalid", None, False)
        assert result.error.startswith("Not sent: ") and says in result.error


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(sim, token):
    spec = RequestSpec("POST", f"{sim.url}/listings/", b"{}", (1,), headers=(("X-A", "b\r\nHost: evil"),))
    result = send(spec, token)
    assert (result.error_kind, result.status, result.sent) == ("invalid", None, False)
    assert sim.requests_log() == []


# -- failures ------------------------------------------------------------------------------------------


def test_a_refused_connection_is_a_connect_error_and_any_method_retries(token):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = spec_for(f"http://127.0.0.1:{port}", "create_listing", LISTING)
    result = send(spec, token)
    assert result.error_kind == "connect"
    assert "connection refused" in result.error and "Nothing was sent" in result.error
    assert outcome_of(result, spec).action == "retry"


def test_a_failed_tls_handshake_means_nothing_was_sent(tiny, token):
    received = []

    def not_tls(conn: socket.socket) -> None:
        received.append(conn.recv(4096))
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    server = tiny(not_tls)
    spec = spec_for(server.url.replace("http://", "https://"), "create_listing", LISTING)
    result = send(spec, token)
    assert (result.error_kind, result.sent) == ("connect", False)
    assert "TLS handshake failed" in result.error
    assert outcome_of(result, spec).action == "retry"
    assert b"Data Platform" not in b"".join(received)  # only a TLS hello reached the server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for localhost: (certificate file, key file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(folder / "cert.pem"), str(folder / "key.pem")


def tls_server(tiny, certificate: tuple[str, str], received: list[bytes]) -> TinyServer:
    """A TLS server for localhost answering every request on a connection with a 200 and a JSON body."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)

    def answer(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            while request := read_request(tls):
                received.append(request)
                tls.sendall(
                    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"id": "1"}'
                )

    return tiny(answer)


def test_an_untrusted_certificate_fails_the_handshake_and_nothing_is_sent(tiny, token, certificate):
    received: list[bytes] = []
    server = tls_server(tiny, certificate, received)
    url = server.url.replace("http://127.0.0.1", "https://localhost") + "/listings/1/"
    result = send(RequestSpec("GET", url, None, (1,)), token)
    assert (result.error_kind, result.sent) == ("connect", False)
    assert "TLS handshake failed" in result.error and "Nothing was sent" in result.error
    assert received == []


def test_https_with_a_trusted_certificate_is_answered_on_one_kept_alive_connection(
    tiny, token, certificate, monkeypatch
):
    monkeypatch.setattr(transport, "CA_BUNDLE", certificate[0])
    received: list[bytes] = []
    server = tls_server(tiny, certificate, received)
    url = server.url.replace("http://127.0.0.1", "https://localhost") + "/listings/1/"
    session = new_session()
    for _ in range(2):
        result = send(RequestSpec("GET", url, None, (1,)), token, session=session)
        assert (result.status, result.json, result.error_kind) == (200, {"id": "1"}, None)
    assert server.connections == 1 and len(received) == 2
    assert received[0].startswith(b"GET /listings/1/ HTTP/1.1\r\n")
    assert f"Host: localhost:{url.split(':')[2].split('/')[0]}".encode() in received[0]


def test_a_connection_dropped_after_a_create_is_unknown_and_the_object_was_created(sim, token):
    sim.add_fault("drop", route="create_listing")
    spec = spec_for(sim.url, "create_listing", LISTING)
    result = send(spec, token)
    assert (result.status, result.error_kind, result.sent) == (None, "sent_then_failed", True)
    assert "may have received it" in result.error
    outcome = outcome_of(result, spec)
    assert outcome.action == "unknown"
    assert [o["name"] for o in sim.objects("listings")] == ["Data Platform"]


def test_a_dropped_update_is_retried(sim, token):
    listing = sim.seed(listings=[LISTING])["listings"][0]
    sim.add_fault("drop", route="update_listing")
    spec = spec_for(sim.url, "update_listing", {"name": "B"}, listing["id"])
    result = send(spec, token)
    assert result.error_kind == "sent_then_failed"
    assert outcome_of(result, spec).action == "retry"


def test_a_redirect_is_not_followed_and_its_location_is_named(sim, token, tiny):
    elsewhere = tiny(lambda conn: conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"))
    sim.add_fault("redirect", route="create_listing", location=f"{elsewhere.url}/listings/?token=abc")
    spec = spec_for(sim.url, "create_listing", LISTING)
    result = send(spec, token)
    assert (result.status, result.error_kind) == (302, "redirect")
    assert f"{elsewhere.url}/listings/?token=****" in result.error
    outcome = outcome_of(result, spec)
    assert outcome.action == "permanent"
    assert f"redirect to {elsewhere.url}/listings/" in outcome.message
    time.sleep(0.1)
    assert elsewhere.connections == 0


def test_a_hang_past_the_read_timeout_is_a_read_timeout(sim, token):
    sim.add_fault("hang", route="update_listing", seconds=3)
    listing = sim.seed(listings=[LISTING])["listings"][0]
    spec = spec_for(sim.url, "update_listing", {"name": "B"}, listing["id"])
    result = send(spec, token, read_timeout=0.3, deadline=5)
    assert (result.status, result.error_kind) == (None, "read_timeout")
    assert result.duration_ms < 2000
    assert outcome_of(result, spec).action == "retry"


def test_a_hang_hits_the_total_deadline(sim, token):
    sim.add_fault("hang", route="create_listing", seconds=3)
    spec = spec_for(sim.url, "create_listing", LISTING)
    result = send(spec, token, read_timeout=5, deadline=0.5)
    assert (result.status, result.error_kind) == (None, "deadline")
    assert 400 <= result.duration_ms < 2000
    assert outcome_of(result, spec).action == "unknown"


def trickle_body(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        conn.sendall(b" ")
        time.sleep(0.05)


def trickle_status_line(conn: socket.socket) -> None:
    read_request(conn)
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
        conn.sendall(bytes([byte]))
        time.sleep(0.1)


@pytest.mark.parametrize(("handler", "status"), [(trickle_body, 200), (trickle_status_line, None)])
def test_a_server_trickling_bytes_can_not_hold_a_worker_past_the_deadline(tiny, token, handler, status):
    server = tiny(handler)
    spec = RequestSpec("PUT", f"{server.url}/listings/1/", b"{}", (1,), target_id="1")
    result = send(spec, token, read_timeout=0.5, deadline=1.0)
    assert (result.status, result.error_kind) == (status, "deadline")
    assert result.duration_ms < 1800


def test_a_huge_answer_is_capped_and_the_created_id_still_comes_from_location(sim, token):
    sim.add_fault("huge", route="create_listing", size=3_000_000)
    spec = spec_for(sim.url, "create_listing", LISTING)
    result = send(spec, token, max_body=20_000)
    assert (result.status, result.error_kind, result.truncated) == (201, "too_large", True)
    assert len(result.body) == 20_000
    assert result.json is None
    outcome = outcome_of(result, spec)
    assert outcome.action == "done"
    assert outcome.created_id == sim.objects("listings")[0]["id"]


def test_reading_a_huge_answer_keeps_memory_bounded_and_drops_the_connection(tiny, token):
    block = b"x" * 65_536
    written = []

    def endless(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        )
        total = 0
        try:
            for _ in range(1600):
                conn.sendall(block)
                total += len(block)
        finally:
            written.append(total)

    server = tiny(endless)
    spec = RequestSpec("PUT", f"{server.url}/listings/1/", b"{}", (1,))
    tracemalloc.start()
    try:
        result = send(spec, token, max_body=20_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.status, result.error_kind, result.truncated, len(result.body)) == (
        200,
        "too_large",
        True,
        20_000,
    )
    assert peak < 2_000_000
    deadline = time.monotonic() + 3
    while not written and time.monotonic() < deadline:
        time.sleep(0.02)
    assert written and written[0] < 100 * 1024 * 1024


def test_a_malformed_2xx_is_reported_and_still_done(sim, token):
    listing = sim.seed(listings=[LISTING])["listings"][0]
    sim.add_fault("malformed", route="update_listing")
    spec = spec_for(sim.url, "update_listing", {"name": "B"}, listing["id"])
    result = send(spec, token)
    assert (result.status, result.error_kind, result.json) == (200, "malformed", None)
    assert outcome_of(result, spec).action == "done"


def test_a_server_error_on_a_create_is_unknown_but_on_an_update_is_retried(sim, token):
    sim.add_fault("error", route="create_listing", status=503)
    spec = spec_for(sim.url, "create_listing", LISTING)
    assert outcome_of(send(spec, token), spec).action == "unknown"
    listing = sim.seed(listings=[LISTING])["listings"][0]
    sim.add_fault("error", route="update_listing", status=502)
    spec = spec_for(sim.url, "update_listing", {"name": "B"}, listing["id"])
    assert outcome_of(send(spec, token), spec).action == "retry"


# -- helpers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@api.clazar.io/listings/?page=2", "https://api.clazar.io/listings/?page=2"),
        (
            "https://api.clazar.io/x/?access_token=abc&name=A#frag",
            "https://api.clazar.io/x/?access_token=****&name=A",
        ),
        (
            "https://api.clazar.io/x/?sig=1&api_key=k&code=c",
            "https://api.clazar.io/x/?sig=****&api_key=****&code=****",
        ),
        ("https://api.clazar.io/x/?v=eyJhbGciOi.eyJzdWIiOiIx.c2ln", "https://api.clazar.io/x/?v=****"),
        ("http://[::1]:8010/listings/", "http://[::1]:8010/listings/"),
    ],
)
def test_sanitize_url_drops_userinfo_and_secret_query_values(url, shown):
    assert transport.sanitize_url(url) == shown


@blocking_only
def test_sessions_are_kept_per_credential_and_bounded():
    transport.close_sessions()
    first = transport.session_for("a")
    assert transport.session_for("a") is first
    for number in range(transport.MAX_SESSIONS + 5):
        transport.session_for(f"k{number}")
    assert transport.session_for("a") is not first
    transport.close_sessions()


def test_a_kept_alive_connection_is_reused(sim, token):
    session = new_session()
    spec = spec_for(sim.url, "create_listing", LISTING)
    before = sim.connections_accepted
    for _ in range(3):
        assert send(spec, token, session=session).status == 201
    assert sim.connections_accepted - before == 1
    assert session.idle_connections() == 1


@blocking_only
def test_a_forked_child_makes_its_own_connections_and_the_parents_keep_working(sim, token):
    transport.close_sessions()
    spec = spec_for(sim.url, "create_listing", LISTING)
    session = transport.session_for("forked")
    assert send(spec, token, session=session).status == 201
    accepted = sim.connections_accepted
    pid = os.fork()
    if pid == 0:  # the child: a session of its own, the inherited sockets closed
        own = transport.session_for("forked") is not session and session.idle_connections() == 0
        os._exit(0 if own else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert send(spec, token, session=session).status == 201  # on the parent's kept-alive connection
    assert sim.connections_accepted == accepted
    transport.close_sessions()


def test_a_kept_alive_connection_the_server_closed_while_idle_is_not_reused(tiny, token):
    """A server may close an idle keep-alive connection (its own timeout) without having said so: the
    next create goes out on a new connection instead of failing as "may have been received"."""

    def one_answer_then_close(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b'HTTP/1.1 201 Created\r\nContent-Length: 13\r\n\r\n{"id": "o-1"}')

    server = tiny(one_answer_then_close)
    session = new_session()
    spec = RequestSpec("POST", f"{server.url}/private_offers/", None, (1,))
    for _ in range(2):
        result = send(spec, token, session=session)
        assert (result.status, result.error_kind) == (201, None)
        time.sleep(0.1)  # idle: the server's close arrives
    assert server.connections == 2


def test_the_request_line_and_headers_are_what_clazar_receives_and_a_gzip_answer_is_read(tiny, token):
    """The transport builds the request itself (no requests.Request): a stray space or non-ASCII character
    in a configured URL is percent-encoded, the body's length is declared, and a compressed answer is
    decoded before it is parsed."""
    received: list[bytes] = []
    body = gzip.compress(b'{"id": "po-1"}')

    def answer(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        while len(rest) < length:
            rest += conn.recv(65536)
        received.append(head + b"\r\n\r\n" + rest)
        conn.sendall(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    server = tiny(answer)
    spec = RequestSpec(method="POST", url=f"{server.url}/private offers/é?x=a b", body=b'{"a":1}', seqs=(1,))
    result = send(spec, token)
    assert (result.status, result.json, result.error_kind) == (201, {"id": "po-1"}, None)
    head, _, sent_body = received[0].partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "POST /private%20offers/%C3%A9?x=a%20b HTTP/1.1"
    sent = dict(line.split(": ", 1) for line in lines[1:])
    assert sent["Authorization"] == f"Bearer {token}" and sent["Content-Length"] == "7"
    assert sent["Content-Type"] == sent["Accept"] == "application/json"
    assert sent_body == b'{"a":1}'
    assert result.request_headers["Authorization"] == "Bearer ****"


def test_an_informational_answer_is_skipped_and_garbage_is_not_taken_for_an_answer(tiny, token):
    def continue_then_created(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.sendall(b'HTTP/1.1 201 Created\r\nContent-Length: 13\r\n\r\n{"id": "o-1"}')

    def garbage(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"SMTP ready\r\n\r\n")

    spec = RequestSpec("POST", f"{tiny(continue_then_created).url}/listings/", b"{}", (1,))
    result = send(spec, token)
    assert (result.status, result.json, result.error_kind) == (201, {"id": "o-1"}, None)
    spec = RequestSpec("POST", f"{tiny(garbage).url}/listings/", b"{}", (1,))
    result = send(spec, token)
    assert (result.status, result.error_kind, result.sent) == (None, "sent_then_failed", True)
    assert "not HTTP/1.1" in result.error and "may have received it" in result.error


def test_a_post_without_a_body_declares_an_empty_one(sim, token):
    offer = seed_offer(sim)
    spec = spec_for(sim.url, "publish_private_offer", None, offer["id"])
    result = send(spec, token)
    assert (result.status, result.error_kind) == (200, None)
    assert result.request_headers["Content-Length"] == "0"  # as the attempt inspector shows it
    [received] = sim.requests_log(method="POST")
    assert received["headers"].get("content-length") == "0"  # what Clazar received, not what we meant


def answer_with(*answers: bytes, close: bool = False) -> Callable[[socket.socket], None]:
    """A handler sending each answer after one request on the connection (then closing, if asked)."""

    def handle(conn: socket.socket) -> None:
        for answer in answers:
            if not read_request(conn):
                return
            conn.sendall(answer)
        if close:
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)
        else:
            read_request(conn)  # keeps the connection open until the client closes it

    return handle


CHUNKED = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"id"\r\n8\r\n: "c-1"}\r\n0\r\n\r\n'


@pytest.mark.parametrize(
    ("answers", "close", "json", "connections"),
    [
        # a chunked answer ends at its last chunk: the connection carries the next request
        ((CHUNKED, CHUNKED), False, {"id": "c-1"}, 1),
        # no length: the body ends where the server closes, and that connection is never reused
        (
            (b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"id": "u-1"}',),
            True,
            {"id": "u-1"},
            2,
        ),
        # "Connection: close": read whole, then the next request opens a new connection
        (
            (b'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 12\r\n\r\n{"id": "k1"}',),
            True,
            {"id": "k1"},
            2,
        ),
    ],
    ids=["chunked", "until-close", "connection-close"],
)
def test_an_answer_is_read_to_its_end_however_it_is_framed(tiny, token, answers, close, json, connections):
    server = tiny(answer_with(*answers, close=close))
    session = new_session()
    spec = RequestSpec("PUT", f"{server.url}/listings/1/", b"{}", (1,), target_id="1")
    for _ in range(2):
        result = send(spec, token, session=session)
        assert (result.status, result.json, result.error_kind) == (200, json, None)
        time.sleep(0.05)
    assert server.connections == connections


def test_an_answer_cut_off_mid_body_says_so_and_keeps_the_status(tiny, token):
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id": "partial'
    server = tiny(answer_with(cut, close=True))
    spec = RequestSpec("PUT", f"{server.url}/listings/1/", b"{}", (1,), target_id="1")
    result = send(spec, token)
    assert (result.status, result.error_kind) == (200, "sent_then_failed")
    assert "cut the answer off" in result.error and "answered HTTP 200" in result.error


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n", "longer than 65536 bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header: 1\r\n\r\n{}", "not HTTP/1.1"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!",
            "could not be decompressed",
        ),
    ],
    ids=["head-too-long", "bad-header", "not-gzip"],
)
def test_an_answer_that_can_not_be_read_is_named_and_may_have_been_received(tiny, token, answer, says):
    server = tiny(answer_with(answer))
    spec = RequestSpec("POST", f"{server.url}/listings/", b"{}", (1,))
    result = send(spec, token)
    assert (result.error_kind, result.sent) == ("sent_then_failed", True)
    assert says in result.error and "may have received it" in result.error


def test_a_header_name_that_is_not_a_token_is_refused_before_anything_is_sent(tiny, token):
    server = tiny(answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    spec = RequestSpec("POST", f"{server.url}/listings/", b"{}", (1,), headers=(("X Tenant", "a"),))
    result = send(spec, token)
    assert (result.error_kind, result.sent) == ("invalid", False)
    assert "'X Tenant'" in result.error
    assert server.connections == 0
