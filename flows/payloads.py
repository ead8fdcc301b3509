"""Records + destination config -> requests (DESIGN.md section 5).

One pure function for the Sample Payload panel, Send Test Data and the workers, so what a person previews
is byte for byte what is sent. No ORM, no network.

Input: records as ``(seq, data)`` pairs (objects with ``.seq`` and ``.data``, such as ``Record`` rows, work
too). Output: every seq appears exactly once, in one ``RequestSpec`` or in one ``RecordError``; a bad record
never stops the others.

Decisions:

- Bodies are compact JSON (``ensure_ascii=False``, no spaces) in UTF-8 with the record's own key order
  (records come from JSON, so the order is stable): the same input always gives the same bytes.
- Macros are read from the record *before* excludes, so an ID can go in the URL and stay out of the body.
  A top-level key that literally contains dots wins over the nested path it spells (macros and excludes).
- Macro values are URL-encoded with ``quote(safe="")``: a value can never add a path segment, a query or
  a host. Null, empty, list/object values and the values "." and ".." are per-record errors.
- Headers carry no macros (see ``flows.config``); they are the same for every request of a destination.
- Batching groups records that resolve to the same URL, up to the batch size. A batch takes the place of
  its first record, so URLs keep first-appearance order and two requests to one target never swap.
  ``preview`` reads at most ``limit`` x batch size records, so it costs the same for 1k or 1M records
  (a batch for a URL that recurs later may show fewer records than the full run would put in it).
- Code templates run in Jinja's immutable sandbox with StrictUndefined, autoescape off and no Python
  access, under the rules shared with mapping expressions (``clazar_dest.sandbox``: no text formatting
  or padding, values capped at ``MAX_OUTPUT`` characters and numbers at ``MAX_BITS`` bits). Each
  batch also gets a work budget (loop items, calls, ``range`` items) and its output is capped at
  ``MAX_OUTPUT`` characters. ``{{ value }}`` prints None/True/False and lists/dicts as JSON; strings
  print as they are (use ``|tojson`` to quote them). The output must be JSON; it is re-encoded compactly.
- ``target_id`` (the ordering key): the ID value for templates; for Advanced PUT/PATCH/DELETE the URL
  path (hashed past 255 characters); "" for creates, which have no order to keep.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Any, Protocol
from urllib.parse import quote

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes, pass_context, pass_eval_context
from jinja2.exceptions import SecurityError
from jinja2.filters import do_replace, sync_do_join
from jinja2.runtime import Undefined
from jinja2.sandbox import safe_range
from jinja2.visitor import NodeTransformer

from clazar_dest.clazar.endpoints import BY_KEY
from clazar_dest.clazar.spec import RecordError, RequestSpec
from clazar_dest.sandbox import BoundedSandbox
from flows.config import MACRO, MAX_URL, DestinationConfig, origin_of, parse_other_props, scan_headers

MAX_OUTPUT = 5_000_000  # characters a code template may produce (or hold in one value) per batch
MAX_STEPS = 1_000_000  # loop items, calls and range items a code template may spend per batch
TARGET_MAX = 255  # Delivery.target_id


class RecordLike(Protocol):
    seq: int
    data: Any


Item = RequestSpec | RecordError


class ConfigError(ValueError):
    """The config does not validate against this API base; ``errors`` is ``DestinationConfig.validate``."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__(" ".join(m for messages in errors.values() for m in messages))


# ---------------------------------------------------------------------------------------------------------
# Public API


def build_requests(
    config: DestinationConfig, records: Iterable[tuple[int, Any]] | Iterable[RecordLike], api_base: str
) -> list[Item]:
    """The requests for ``records`` (``(seq, data)`` pairs), in order; ConfigError if the config is invalid."""
    return list(iter_requests(config, records, api_base))


def iter_requests(
    config: DestinationConfig, records: Iterable[tuple[int, Any]] | Iterable[RecordLike], api_base: str
) -> Iterator[Item]:
    """Like ``build_requests`` but lazy: each request is yielded as soon as it is final."""
    plan = _plan(config, api_base)  # raises now, not at the first next()
    pairs = _pairs(records)
    if plan.size:
        return _batched(plan, pairs)
    return (_single(plan, seq, data) for seq, data in pairs)


def preview(
    config: DestinationConfig,
    records: Iterable[tuple[int, Any]] | Iterable[RecordLike],
    api_base: str,
    limit: int = 3,
) -> list[Item]:
    """The first ``limit`` requests/errors, reading at most ``limit`` x batch size records."""
    plan = _plan(config, api_base)
    head = islice(_pairs(records), limit * max(plan.size, 1))
    return list(islice(iter_requests(config, head, api_base), limit))


def pretty(item: Item) -> dict[str, Any]:
    """A request as the Sample Payload panel shows it, with the headers the transport adds.

    Keys: method, url, headers ("Name: value" strings), body (indented JSON or None), seqs, target_id;
    for a RecordError: error, seqs.
    """
    if isinstance(item, RecordError):
        return {"error": item.message, "seqs": [item.seq]}
    headers = ["Authorization: Bearer ****", "Accept: application/json"]
    if item.body is not None:
        headers.append("Content-Type: application/json")
    endpoint = BY_KEY.get(item.endpoint)
    if (endpoint.action in ("create", "publish")) if endpoint else item.method == "POST":
        headers.append("Idempotency-Key: <per delivery>")
    headers += [f"{name}: {value}" for name, value in item.headers]
    return {
        "method": item.method,
        "url": item.url,
        "headers": headers,
        "body": _indented(item.body),
        "seqs": list(item.seqs),
        "target_id": item.target_id,
    }


def code_problem(code: str) -> str | None:
    """Why a code template can't be used ("Code template line 3: ..."), or None when it compiles."""
    if not code.strip():
        return 'Enter a code template that produces JSON, e.g. {"records": {{ records|tojson }}}.'
    try:
        _compile(code)
    except TemplateSyntaxError as exc:
        return f"Code template line {exc.lineno}: {exc.message}"
    return None


# ---------------------------------------------------------------------------------------------------------
# The plan: everything about a config that does not depend on the record, worked out once


@dataclass(frozen=True)
class _Attr:
    name: str
    path: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class _Plan:
    method: str
    endpoint: str
    label: str  # what the macros fill, for messages: "URL" or "Private Offer ID"
    fixed: tuple[str, str] | None  # (url, target_id) when no macros are used
    head: str  # the URL before the macro part
    pattern: tuple[str | _Attr, ...]  # literals and macros, filled per record
    tail: str  # the URL after the macro part (rest of a template path)
    is_id: bool  # template ID: literals are encoded too, and the filled value is the target
    ordered: bool  # Advanced non-POST: the path is the target
    headers: tuple[tuple[str, str], ...]
    has_body: bool
    excludes: tuple[tuple[str, tuple[str, ...]], ...]
    size: int  # 0: one request per record
    prop: str
    other: Mapping[str, Any]
    code: Template | None
    context: Mapping[str, Any]


@lru_cache(maxsize=128)
def _plan(config: DestinationConfig, api_base: str) -> _Plan:
    errors = config.validate(api_base)
    if errors:
        raise ConfigError(errors)
    base = api_base.rstrip("/")
    endpoint = config.endpoint()
    method = config.effective_method()
    if endpoint is not None:
        label, head, tail, text, has_body = "URL", base + endpoint.path, "", "", endpoint.has_body
        if endpoint.id_param:
            label = endpoint.id_label or "ID"
            before, _, tail = endpoint.path.partition("{" + endpoint.id_param + "}")
            head, text = base + before, config.id_value
        pattern, is_id, ordered = _pattern(text), bool(endpoint.id_param), False
    else:
        label, head, tail, has_body = "URL", base, "", method != "DELETE"
        pattern, is_id, ordered = _pattern(origin_of(config.url)[3]), False, method != "POST"
    fixed = None
    if not any(isinstance(p, _Attr) for p in pattern):
        raw = "".join(p for p in pattern if isinstance(p, str))
        url = head + (quote(raw, safe="") if is_id else raw) + tail
        fixed = (url, _target(raw, url, base, is_id, ordered))
    batch = config.batching
    size = batch.size if batch.enabled else 0
    prop = batch.property_name
    code = _compile(batch.code) if size and batch.algorithm == "code" else None
    return _Plan(
        method=method,
        endpoint=endpoint.key if endpoint else "",
        label=label,
        fixed=fixed,
        head=head,
        pattern=pattern,
        tail=tail,
        is_id=is_id,
        ordered=ordered,
        headers=scan_headers(config.headers)[0] if endpoint is None else (),
        has_body=has_body,
        excludes=tuple((name, tuple(name.split("."))) for name in config.exclude),
        size=size,
        prop=prop,
        other={k: v for k, v in parse_other_props(batch.other_props).items() if k != prop},
        code=code,
        context={
            "mode": config.mode,
            "template": config.template,
            "endpoint": endpoint.label if endpoint else "Advanced",
            "method": method,
            "batch_size": size,
        },
    )


def _pattern(text: str) -> tuple[str | _Attr, ...]:
    parts: list[str | _Attr] = []
    pos = 0
    for match in MACRO.finditer(text):
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        name = match.group(1).strip()
        parts.append(_Attr(name, tuple(name.split("."))))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def _target(raw: str, url: str, base: str, is_id: bool, ordered: bool) -> str:
    if is_id:
        target = raw
    elif ordered:
        target = url[len(base) :].split("?", 1)[0]
    else:
        return ""
    if len(target) > TARGET_MAX:
        return "sha256:" + hashlib.sha256(target.encode()).hexdigest()
    return target


# ---------------------------------------------------------------------------------------------------------
# Per record


class _Skip(Exception):
    """This record can't become (part of) a request; the message says why."""

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _dump(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def _pairs(records: Iterable[tuple[int, Any]] | Iterable[RecordLike]) -> Iterator[tuple[int, Any]]:
    for item in records:
        if isinstance(item, tuple):
            yield item[0], item[1]
        else:
            yield item.seq, item.data


def _value(data: dict[str, Any], attr: _Attr, seq: int, label: str) -> str:
    if attr.name in data:
        value = data[attr.name]
    else:
        value = data
        for key in attr.path:
            if not isinstance(value, dict) or key not in value:
                raise _Skip(f"Record {seq} has no attribute '{attr.name}' for the {label}", attr.name)
            value = value[key]
    if value is None:
        raise _Skip(f"Record {seq} has a null '{attr.name}'; the {label} needs a value", attr.name)
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int)) or (isinstance(value, float) and math.isfinite(value)):
        text = str(value)
    else:
        kind = {list: "a list", dict: "an object"}.get(type(value), f"the value {value!r}")
        raise _Skip(
            f"Record {seq} has {kind} in '{attr.name}'; the {label} needs text or a number", attr.name
        )
    if text in ("", ".", ".."):
        shown = "an empty value" if not text else f"'{text}'"
        raise _Skip(
            f"Record {seq} has {shown} in '{attr.name}', which can't be used in the {label}", attr.name
        )
    return text


def _locate(plan: _Plan, seq: int, data: Any) -> tuple[str, str]:
    """The record's (url, target_id)."""
    if not isinstance(data, dict):
        raise _Skip(f"Record {seq} is not a JSON object, so it can't be sent")
    if plan.fixed is not None:
        return plan.fixed
    if plan.is_id and len(plan.pattern) == 1:  # the usual {id}: skip the general join
        filled = _value(data, plan.pattern[0], seq, plan.label)  # type: ignore[arg-type]
        return plan.head + quote(filled, safe="") + plan.tail, _target(filled, "", "", True, False)
    raw = []
    for part in plan.pattern:
        raw.append(part if isinstance(part, str) else _value(data, part, seq, plan.label))
    if plan.is_id:
        filled = "".join(raw)
        url = plan.head + quote(filled, safe="") + plan.tail
    else:
        filled = "".join(
            p if isinstance(p, str) else quote(v, safe="") for p, v in zip(plan.pattern, raw, strict=True)
        )
        url = plan.head + filled + plan.tail
    if len(url) > MAX_URL:
        raise _Skip(f"Record {seq} makes a URL longer than {MAX_URL} characters")
    return url, _target(filled, url, plan.head, plan.is_id, plan.ordered)


def _without(data: dict[str, Any], excludes: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, Any]:
    """The record minus excluded attributes; copies only what it changes (records are shared)."""
    copied = False
    for name, path in excludes:
        if name in data:
            if not copied:
                data, copied = dict(data), True
            del data[name]
        elif len(path) > 1:
            smaller = _dropped(data, path)
            if smaller is not None:
                data, copied = smaller, True
    return data


def _dropped(obj: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """A copy of ``obj`` without the nested ``path``, or None when there is nothing to drop."""
    key, rest = path[0], path[1:]
    if key not in obj:
        return None
    out = dict(obj)
    if not rest:
        del out[key]
        return out
    child = obj[key]
    inner = _dropped(child, rest) if isinstance(child, dict) else None
    if inner is None:
        return None
    out[key] = inner
    return out


def _json_problem(seq: int, exc: Exception) -> RecordError:
    why = "it holds NaN or Infinity" if "Out of range float" in str(exc) else str(exc)
    return RecordError(seq, f"Record {seq} can't be sent as JSON: {why}")


def _single(plan: _Plan, seq: int, data: Any) -> Item:
    try:
        url, target = _locate(plan, seq, data)
        body = _dump(_without(data, plan.excludes)) if plan.has_body else None
    except _Skip as skip:
        return RecordError(seq, skip.message, skip.fields)
    except (ValueError, TypeError, RecursionError) as exc:
        return _json_problem(seq, exc)
    return RequestSpec(plan.method, url, body, (seq,), plan.headers, target, plan.endpoint)


# ---------------------------------------------------------------------------------------------------------
# Batches


class _Group:
    __slots__ = ("full", "rows", "seqs", "target", "url")

    def __init__(self, url: str, target: str) -> None:
        self.url, self.target = url, target
        self.seqs: list[int] = []
        self.rows: list[dict[str, Any]] = []
        self.full = False


def _batched(plan: _Plan, pairs: Iterator[tuple[int, Any]]) -> Iterator[Item]:
    """Group by URL; yield each batch once it is full and everything before it has been yielded."""
    pending: deque[_Group | RecordError] = deque()
    groups: dict[str, _Group] = {}
    for seq, data in pairs:
        try:
            url, target = _locate(plan, seq, data)
            row = _without(data, plan.excludes)
        except _Skip as skip:
            pending.append(RecordError(seq, skip.message, skip.fields))
        except (ValueError, TypeError, RecursionError) as exc:
            pending.append(_json_problem(seq, exc))
        else:
            group = groups.get(url)
            if group is None:
                group = groups[url] = _Group(url, target)
                pending.append(group)
            group.seqs.append(seq)
            group.rows.append(row)
            if len(group.seqs) >= plan.size:
                group.full = True
                del groups[url]
        while pending and (isinstance(pending[0], RecordError) or pending[0].full):
            yield from _finish(plan, pending.popleft())
    while pending:
        yield from _finish(plan, pending.popleft())


def _finish(plan: _Plan, item: _Group | RecordError) -> list[Item]:
    if isinstance(item, RecordError):
        return [item]
    if plan.code is not None:
        try:
            body = _render(plan.code, item.rows, plan.context)
        except _Skip as skip:
            return [RecordError(seq, skip.message) for seq in item.seqs]
        return [_spec(plan, item, body, item.seqs)]
    try:
        return [_spec(plan, item, _dump({plan.prop: item.rows, **plan.other}), item.seqs)]
    except (ValueError, TypeError, RecursionError):
        pass
    # Some record can't be JSON: report those and send the others.
    errors: list[Item] = []
    good: list[tuple[int, dict[str, Any]]] = []
    for seq, row in zip(item.seqs, item.rows, strict=True):
        try:
            _dump(row)
            good.append((seq, row))
        except (ValueError, TypeError, RecursionError) as exc:
            errors.append(_json_problem(seq, exc))
    if good:
        body = _dump({plan.prop: [row for _, row in good], **plan.other})
        errors.append(_spec(plan, item, body, [seq for seq, _ in good]))
    return errors


def _spec(plan: _Plan, group: _Group, body: bytes, seqs: list[int]) -> RequestSpec:
    return RequestSpec(plan.method, group.url, body, tuple(seqs), plan.headers, group.target, plan.endpoint)


def _indented(body: bytes | None) -> str | None:
    if body is None:
        return None
    text = body.decode("utf-8", "replace")
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    except ValueError:
        return text


# ---------------------------------------------------------------------------------------------------------
# The code template sandbox

_steps: ContextVar[list[int] | None] = ContextVar("code_template_steps", default=None)


def _charge(n: int = 1) -> None:
    left = _steps.get()
    if left is not None:
        left[0] -= n
        if left[0] < 0:
            raise SecurityError(f"the template does more than {MAX_STEPS:,} steps of work; simplify it")


@pass_context
def _counted(_ctx: Any, iterable: Iterable[Any]) -> Iterator[Any]:
    """Wrapped around every ``{% for %}`` iterable: each item costs a step."""
    for item in iterable:
        _charge()
        yield item


@pass_eval_context
def _join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    items = list(value)
    _charge(len(items))
    texts = sum(len(x) for x in items if isinstance(x, str))
    eval_ctx.environment.check_size(len(str(d)) * len(items) + texts)
    return sync_do_join(eval_ctx, items, d, attribute)


@pass_eval_context
def _replace(eval_ctx: Any, s: str, old: str, new: str, count: int | None = None) -> str:
    eval_ctx.environment.check_replace(str(s), str(old), str(new), -1 if count is None else count)
    return do_replace(eval_ctx, s, old, new, count)


def _range(*args: int) -> range:
    numbers = safe_range(*args)
    _charge(len(numbers))
    return numbers


def _unjsonable(value: Any) -> Any:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    raise TypeError(f"a {type(value).__name__} can't be written as JSON")


def _tojson(value: Any) -> str:
    """Compact JSON (Jinja's own tojson escapes for HTML, which is wrong for a request body)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_unjsonable)


def _finalize(value: Any) -> Any:
    """``{{ x }}`` of None, a boolean, a list or a dict prints JSON, not Python's repr."""
    if value is None or isinstance(value, (bool, dict, list)):
        return _tojson(value)
    return value


class _Guard(NodeTransformer):
    """Rewrites a parsed template so every loop item passes through the work budget."""

    def visit_For(self, node: nodes.For, *args: Any, **kwargs: Any) -> nodes.Node:
        node = self.generic_visit(node)  # type: ignore[assignment]
        node.iter = nodes.Filter(node.iter, "_steps", [], [], None, None, lineno=node.iter.lineno)
        return node


class _Sandbox(BoundedSandbox):
    """The shared rules plus a work budget per batch (``MAX_STEPS``) and a larger value cap."""

    max_size = MAX_OUTPUT

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _charge()
        return super().call(__context, __obj, *args, **kwargs)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = _Guard().visit(super()._parse(source, name, filename))
        tree.set_environment(self)
        return tree


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, finalize=_finalize)
_ENV.globals["range"] = _range
_ENV.filters.update(tojson=_tojson, join=_join, replace=_replace, _steps=_counted)


@lru_cache(maxsize=64)
def _compile(code: str) -> Template:
    return _ENV.from_string(code)


def _template_error(exc: Exception) -> str:
    line = exc.lineno if isinstance(exc, TemplateSyntaxError) else None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, SecurityError):
        message = f"refused by the sandbox: {message}"
    elif isinstance(exc, RecursionError):
        message = "too much recursion"
    return f"Code template line {line}: {message}" if line else f"Code template: {message}"


def _render(template: Template, rows: list[dict[str, Any]], context: Mapping[str, Any]) -> bytes:
    """Render one batch; _Skip with a message a person can act on when it fails."""
    token = _steps.set([MAX_STEPS])
    chunks: list[str] = []
    total = 0
    try:
        for chunk in template.generate(records=rows, config=context):
            total += len(chunk)
            if total > MAX_OUTPUT:
                raise _Skip(
                    f"The code template produced more than {MAX_OUTPUT:,} characters; use smaller batches."
                )
            chunks.append(chunk)
    except _Skip:
        raise
    except Exception as exc:  # anything the template does wrong is that batch's error, never a crash
        raise _Skip(_template_error(exc)) from None
    finally:
        _steps.reset(token)
    try:
        return _dump(json.loads("".join(chunks)))
    except json.JSONDecodeError as exc:
        raise _Skip(
            f"The code template did not produce JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError):
        raise _Skip("The code template produced NaN, Infinity or nesting too deep for JSON.") from None
