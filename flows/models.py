"""Our data and how it moves (DESIGN.md section 4).

Public UUIDs appear in URLs; integer keys stay internal. Secrets use ``EncryptedTextField``.
"""

from __future__ import annotations

from uuid import uuid4

from django.conf import settings
from django.db import models
from django.db.models import Q

from flows.secrets import EncryptedTextField


class Stamped(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class Credential(Stamped):
    """A Clazar API client (OAuth2 client credentials).

    status: unverified -> ok | rejected, set by "Test credential" and by every token fetch.
    """

    class Status(models.TextChoices):
        UNVERIFIED = "unverified", "Not tested"
        OK = "ok", "Working"
        REJECTED = "rejected", "Rejected"

    uuid = models.UUIDField(default=uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    api_base = models.CharField(max_length=200, default="https://api.clazar.io")
    client_id = models.CharField(max_length=200)
    client_secret = EncryptedTextField()
    access_token = EncryptedTextField()
    token_expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=12, choices=Status, default=Status.UNVERIFIED)
    last_error = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    rate_limit = models.PositiveIntegerField(
        default=120, help_text="Requests per minute, shared by all workers."
    )
    paused_until = models.DateTimeField(null=True, blank=True, help_text="Set by a 429 from Clazar.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(rate_limit__gte=1), name="credential_rate_positive")
        ]

    def __str__(self) -> str:
        return self.name


class SalesforceApp(Stamped):
    """The connected-app settings (consumer key and secret). At most one row."""

    class Environment(models.TextChoices):
        PRODUCTION = "production", "Production"
        SANDBOX = "sandbox", "Sandbox"
        DEVELOPER = "developer", "Developer Edition"

    singleton = models.BooleanField(default=True, editable=False)
    consumer_key = models.CharField(max_length=300)
    consumer_secret = EncryptedTextField()
    environment = models.CharField(max_length=12, choices=Environment, default=Environment.PRODUCTION)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["singleton"], name="one_salesforce_app"),
            models.CheckConstraint(condition=Q(singleton=True), name="salesforce_app_singleton"),
        ]


class SalesforceConnection(Stamped):
    """The one connected Salesforce org. Disconnect deletes the row.

    status: ok -> broken (refresh rejected with invalid_grant) -> ok on reconnect.
    """

    class Status(models.TextChoices):
        OK = "ok", "Connected"
        BROKEN = "broken", "Needs reconnecting"

    singleton = models.BooleanField(default=True, editable=False)
    environment = models.CharField(max_length=12, choices=SalesforceApp.Environment)
    instance_url = models.URLField(max_length=300)
    org_id = models.CharField(max_length=18)
    org_name = models.CharField(max_length=200, blank=True)
    user_id = models.CharField(max_length=18, blank=True)
    username = models.CharField(max_length=200, blank=True)
    access_token = EncryptedTextField()
    refresh_token = EncryptedTextField()
    status = models.CharField(max_length=8, choices=Status, default=Status.OK)
    last_error = models.TextField(blank=True)
    connected_at = models.DateTimeField(auto_now_add=True)
    connected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    refreshed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["singleton"], name="one_salesforce_connection"),
            models.CheckConstraint(condition=Q(singleton=True), name="salesforce_connection_singleton"),
        ]


class SalesforcePending(Stamped):
    """Tokens for a *different* org, held (encrypted) while an Admin confirms the switch. At most one row;
    it expires after a few minutes, and cancelling revokes the tokens at Salesforce."""

    singleton = models.BooleanField(default=True, editable=False)
    environment = models.CharField(max_length=12, choices=SalesforceApp.Environment)
    instance_url = models.URLField(max_length=300)
    org_id = models.CharField(max_length=18)
    org_name = models.CharField(max_length=200, blank=True)
    user_id = models.CharField(max_length=18, blank=True)
    username = models.CharField(max_length=200, blank=True)
    access_token = EncryptedTextField()
    refresh_token = EncryptedTextField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["singleton"], name="one_salesforce_pending"),
            models.CheckConstraint(condition=Q(singleton=True), name="salesforce_pending_singleton"),
        ]


class SalesforceUserLink(Stamped):
    """One app user's own Salesforce login (for actions that write to Salesforce as that person)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="salesforce_link"
    )
    org_id = models.CharField(max_length=18)
    sf_user_id = models.CharField(max_length=18)
    username = models.CharField(max_length=200, blank=True)
    instance_url = models.URLField(max_length=300)
    access_token = EncryptedTextField()
    refresh_token = EncryptedTextField()


class Nexset(Stamped):
    """A dataset of JSON records with an inferred schema.

    ``schema`` maps field -> {"type", "nullable", "example", "count"}. ``last_seq`` is the highest Record.seq
    given out; new records take the next numbers under a row lock.
    """

    class Kind(models.TextChoices):
        UPLOAD = "upload", "File upload"
        WEBHOOK = "webhook", "Webhook"
        SALESFORCE = "salesforce", "Salesforce"
        RESPONSE = "response", "API responses"

    uuid = models.UUIDField(default=uuid4, unique=True, editable=False)
    name = models.CharField(max_length=150)
    kind = models.CharField(max_length=12, choices=Kind)
    schema = models.JSONField(default=dict, blank=True)
    record_count = models.PositiveBigIntegerField(default=0)
    last_seq = models.PositiveBigIntegerField(default=0)
    last_record_at = models.DateTimeField(null=True, blank=True)
    code = models.UUIDField(default=uuid4, unique=True, editable=False, help_text="Webhook URL code.")
    webhook_secret = EncryptedTextField()
    webhook_old_secret = EncryptedTextField()
    webhook_old_secret_until = models.DateTimeField(null=True, blank=True)
    source = models.JSONField(
        default=dict, blank=True, help_text="Salesforce object, fields, filter, mapping."
    )
    feeding_destination = models.OneToOneField(
        "Destination", null=True, blank=True, on_delete=models.SET_NULL, related_name="response_nexset"
    )
    next_pull_at = models.DateTimeField(
        null=True, blank=True, db_index=True, help_text="Salesforce: when the schedule pulls next."
    )
    pull_watermark = models.DateTimeField(
        null=True, blank=True, help_text="Salesforce: the newest SystemModstamp pulled so far."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(feeding_destination__isnull=True) | Q(kind="response"),
                name="nexset_only_response_has_feeder",
            ),
            models.CheckConstraint(
                condition=Q(record_count__lte=models.F("last_seq")), name="nexset_count_le_seq"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Record(models.Model):
    """One JSON record of a Nexset. ``source_ref``: row number, webhook message id or Salesforce Id."""

    nexset = models.ForeignKey(Nexset, on_delete=models.CASCADE, related_name="records")
    seq = models.PositiveBigIntegerField()
    data = models.JSONField()
    source_ref = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["nexset", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["nexset", "seq"], name="record_unique_seq"),
            models.UniqueConstraint(
                fields=["nexset", "source_ref"],
                condition=Q(source_ref__isnull=False),
                name="record_unique_source_ref",
            ),
        ]


class Import(Stamped):
    """One upload or pull into a Nexset. All-or-nothing unless ``partial_ok`` (then it says so).

    status: queued -> running -> succeeded | partial | failed
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Imported"
        PARTIAL = "partial", "Imported with rejected rows"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid4, unique=True, editable=False)
    nexset = models.ForeignKey(Nexset, on_delete=models.CASCADE, related_name="imports")
    source = models.CharField(max_length=12, choices=Nexset.Kind, default=Nexset.Kind.UPLOAD)
    status = models.CharField(max_length=10, choices=Status, default=Status.QUEUED)
    filename = models.CharField(max_length=255, blank=True)
    stored_file = models.CharField(
        max_length=500, blank=True, help_text="Path in the media folder while queued."
    )
    size_bytes = models.PositiveBigIntegerField(default=0)
    options = models.JSONField(default=dict, blank=True)
    partial_ok = models.BooleanField(default=False)
    rows_read = models.PositiveBigIntegerField(default=0)
    rows_stored = models.PositiveBigIntegerField(default=0)
    rows_rejected = models.PositiveBigIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="The first errors: row, column, message.")
    error_total = models.PositiveBigIntegerField(default=0)
    message = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-created_at"]


class Destination(Stamped):
    """Where a Nexset's records go. ``config`` is read and written only through ``DestinationConfig``.

    status: draft -> active <-> paused; active -> auto_paused (circuit breaker, reason kept) -> active.
    ``cursor`` is the highest record seq already planned into deliveries. ``failures`` counts consecutive
    server-side failures; at DELIVERY_BREAKER_FAILURES the destination is auto-paused and ``probe_at`` says
    when the sweeper next sends one delivery to see whether Clazar is back (flows/delivery.py).
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        AUTO_PAUSED = "auto_paused", "Auto-paused"

    uuid = models.UUIDField(default=uuid4, unique=True, editable=False)
    name = models.CharField(max_length=150)
    nexset = models.ForeignKey(Nexset, on_delete=models.PROTECT, related_name="destinations")
    credential = models.ForeignKey(Credential, on_delete=models.PROTECT, related_name="destinations")
    config = models.JSONField(default=dict)
    status = models.CharField(max_length=12, choices=Status, default=Status.DRAFT)
    paused_reason = models.TextField(blank=True)
    cursor = models.PositiveBigIntegerField(default=0)
    activated_at = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(
        default=0, help_text="Consecutive server-side failures, for the circuit breaker."
    )
    probe_at = models.DateTimeField(
        null=True, blank=True, help_text="When an auto-paused destination next tries one delivery."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def endpoint_label(self) -> str:
        from clazar_dest.clazar.endpoints import BY_KEY

        if self.config.get("mode") == "advanced":
            return "Advanced"
        endpoint = BY_KEY.get(self.config.get("template", ""))
        return endpoint.label if endpoint else "Not chosen"


class Delivery(Stamped):
    """One request to Clazar covering one record or one batch.

    state: queued -> sending -> succeeded | retry_scheduled | unknown | needs_attention | failed | exhausted;
    retry_scheduled -> queued when due; unknown -> succeeded | needs_attention after reconciling;
    queued | retry_scheduled | needs_attention -> cancelled by an operator.
    A record the request builder refuses is planned straight into ``failed`` with the reason.

    Claimable: ``queued`` or ``retry_scheduled`` with ``next_attempt_at`` due, and (when ``target_id`` is
    set) no older open delivery of the same destination and target. ``sending`` holds a lease
    (``lease_until``); the sweeper resolves expired ones. ``attempts`` counts claims.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SUCCEEDED = "succeeded", "Succeeded"
        RETRY_SCHEDULED = "retry_scheduled", "Retry scheduled"
        UNKNOWN = "unknown", "Outcome unknown"
        NEEDS_ATTENTION = "needs_attention", "Needs attention"
        FAILED = "failed", "Failed"
        EXHAUSTED = "exhausted", "Retries exhausted"
        CANCELLED = "cancelled", "Cancelled"

    OPEN_STATES = (State.QUEUED, State.SENDING, State.RETRY_SCHEDULED, State.UNKNOWN)

    uuid = models.UUIDField(default=uuid4, unique=True, editable=False)
    # No index of its own: the composite indexes below lead with it (one index less to update per write).
    destination = models.ForeignKey(
        Destination, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    state = models.CharField(max_length=16, choices=State, default=State.QUEUED)
    is_test = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    attempts_base = models.PositiveIntegerField(
        default=0, help_text="Attempts made before an operator last queued it again; retries count from here."
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # Random (uuid4) and never looked up: no unique index (every new version of a row paid an entry in it).
    idempotency_key = models.CharField(max_length=64, default=uuid4)
    method = models.CharField(max_length=8)
    url = models.CharField(max_length=2000)
    body = models.BinaryField(null=True, blank=True, help_text="The request body as planned (no secrets).")
    target_id = models.CharField(max_length=255, blank=True, help_text="The object it changes, for ordering.")
    endpoint = models.CharField(
        max_length=40, blank=True, help_text="The catalog key it was planned with; blank for Advanced."
    )
    created_object_id = models.CharField(max_length=255, blank=True)
    checks = models.PositiveSmallIntegerField(
        default=0, help_text="Lookups made to settle an unknown outcome."
    )
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    records = models.ManyToManyField(Record, through="DeliveryItem", related_name="deliveries")

    class Meta:
        ordering = ["-id"]
        indexes = [
            # Ordering of the updates of one object; creates (no target) have no entry.
            models.Index(
                fields=["destination", "target_id", "id"],
                condition=~Q(target_id=""),
                name="delivery_target_order",
            ),
            # The sweeper: due retries and expired leases of every destination.
            models.Index(fields=["state", "next_attempt_at"], name="delivery_state_due"),
            # Claims (the oldest due per state), dashboard and history (capped counts per state, last
            # error, state-filtered pages).
            models.Index(
                fields=["destination", "state", "id"], condition=Q(is_test=False), name="delivery_history"
            ),
            # Dashboard: delivery rate, outcome chart and the live succeeded count (index-only on PostgreSQL).
            models.Index(
                fields=["destination", "finished_at"],
                include=["state"],
                condition=Q(is_test=False, finished_at__isnull=False),
                name="delivery_finished",
            ),
        ]
        constraints = [models.CheckConstraint(condition=Q(attempts__gte=0), name="delivery_attempts_ge_0")]


class DeliveryItem(models.Model):
    """Maps records to deliveries. A record is in at most one non-test delivery per destination."""

    # Indexed by delivery_item_unique (delivery, record).
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="items", db_index=False)
    record = models.ForeignKey(Record, on_delete=models.CASCADE, related_name="delivery_items")
    destination = models.ForeignKey(Destination, on_delete=models.CASCADE, related_name="+")
    is_test = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["destination", "record"],
                condition=Q(is_test=False),
                name="record_once_per_destination",
            ),
            models.UniqueConstraint(fields=["delivery", "record"], name="delivery_item_unique"),
        ]


class Attempt(models.Model):
    """One try of a delivery. Written as ``sending`` before the socket opens, completed afterwards."""

    class Outcome(models.TextChoices):
        SENDING = "sending", "Sending"
        SUCCEEDED = "succeeded", "Succeeded"
        RETRY = "retry", "Will retry"
        UNKNOWN = "unknown", "Outcome unknown"
        FAILED = "failed", "Failed"

    # Indexed by attempt_unique_number (delivery, number).
    delivery = models.ForeignKey(
        Delivery, on_delete=models.CASCADE, related_name="attempt_rows", db_index=False
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    method = models.CharField(max_length=8)
    url = models.CharField(max_length=2000, help_text="Sanitized: no credentials, no query secrets.")
    request_headers = models.JSONField(default=dict, help_text="Names with secret values redacted.")
    request_body = models.TextField(blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome, default=Outcome.SENDING)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="attempt_unique_number")]


class RateBudget(models.Model):
    """The shared request budget of one credential when there is no Redis (flows/ratelimit.py): the GCRA
    "theoretical arrival time" in seconds since the epoch, updated under the row lock."""

    credential = models.OneToOneField(
        Credential, primary_key=True, on_delete=models.CASCADE, related_name="budget"
    )
    tat = models.FloatField(default=0.0)


class AuditEvent(models.Model):
    """Who did what to which object, with a before/after diff where secrets are masked."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=60, db_index=True)
    object_type = models.CharField(max_length=60, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]
