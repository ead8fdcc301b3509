import json

from django.contrib import messages
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpResponse
from django.test import RequestFactory
from django_htmx.middleware import HtmxMiddleware

from flows.middleware import HtmxMessagesMiddleware


def run(view, headers=None):
    def chain(request):
        return HtmxMiddleware(HtmxMessagesMiddleware(view))(request)

    request = RequestFactory().post("/x/", headers=headers or {})
    return SessionMiddleware(MessageMiddleware(chain))(request)


def saying(text, status=200, **response_headers):
    def view(request):
        messages.success(request, text)
        response = HttpResponse("<div>fragment</div>", status=status)
        for name, value in response_headers.items():
            response[name] = value
        return response

    return view


def test_messages_ride_along_with_an_htmx_fragment_as_an_event():
    response = run(saying("Saved “Production”."), headers={"HX-Request": "true"})
    assert json.loads(response["HX-Trigger"]) == {
        "messages": [{"level": "success", "text": "Saved “Production”."}]
    }


def test_existing_htmx_triggers_are_kept():
    response = run(saying("Done", **{"HX-Trigger": '{"refresh": true}'}), headers={"HX-Request": "true"})
    assert json.loads(response["HX-Trigger"]) == {
        "refresh": True,
        "messages": [{"level": "success", "text": "Done"}],
    }


def test_full_page_requests_and_htmx_redirects_leave_messages_for_the_next_page():
    assert "HX-Trigger" not in run(saying("Plain"))
    assert "HX-Trigger" not in run(
        saying("Later", **{"HX-Redirect": "/next/"}), headers={"HX-Request": "true"}
    )
