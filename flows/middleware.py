"""Messages that survive htmx fragment swaps: unread messages ride along as an ``HX-Trigger`` event that the
base template turns into toasts."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.messages import get_messages
from django.http import HttpRequest, HttpResponse
from django_htmx.http import trigger_client_event


class HtmxMessagesMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not getattr(request, "htmx", False) or 300 <= response.status_code < 400:
            return response
        if "HX-Redirect" in response or "HX-Location" in response or "HX-Refresh" in response:
            return response  # the next full page shows them
        storage = get_messages(request)
        items = [{"level": m.level_tag or "info", "text": str(m.message)} for m in storage]
        if items:
            trigger_client_event(response, "messages", items)
        return response
