"""How fast records become requests: ``flows.payloads`` beside a naive first draft, in the same run.

Run: ``.venv/bin/python bench/build_requests.py`` (pure code: no database, no network, no Django settings).

The naive baseline is what a straightforward first version does per record or batch: re-read the stored
config, deep-copy the record to drop excludes, fill macros with ``re.sub``, pretty-print JSON with
``indent=2``, and (for code templates) compile the Jinja template for every batch. The preview rows show
that ``preview`` costs the same for 1k and 1M records, while "build everything, show three" grows.
"""

from __future__ import annotations

import copy
import json
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from clazar_dest.clazar.endpoints import BY_KEY
from clazar_dest.clazar.spec import RequestSpec
from flows.config import DestinationConfig
from flows.payloads import build_requests, preview

BASE = "https://api.clazar.io"
N = 100_000
CODE = (
    '{"offers": [{% for r in records %}{"name": {{ r.name|tojson }}, "buyer": {{ r.buyer|tojson }}, '
    '"price": {{ r.price }}}{% if not loop.last %},{% endif %}{% endfor %}], "count": {{ records|length }}}'
)
CASES: dict[str, dict[str, Any]] = {
    "single: Update Private Offer, {id} macro": {
        "template": "update_private_offer",
        "id_value": "{id}",
        "exclude": ["id", "meta.owner"],
    },
    "batched: property, size 100": {
        "template": "create_private_offer",
        "exclude": ["meta.owner"],
        "batching": {"enabled": True, "size": 100, "other_props": '{"source": "crm"}'},
    },
    "batched: code template, size 100": {
        "template": "create_private_offer",
        "batching": {"enabled": True, "size": 100, "algorithm": "code", "code": CODE},
    },
}


def records(count: int) -> Iterator[tuple[int, dict[str, Any]]]:
    for i in range(count):
        yield (
            i,
            {
                "id": f"po-{i:07d}",
                "name": f"Offer {i} for Acme Corp",
                "listing": "lst-4f1c",
                "buyer": "123456789012",
                "price": 1200.5 + i % 7,
                "dimensions": [{"name": "users", "quantity": i % 50}],
                "meta": {"source": "salesforce", "owner": "ops@example.com"},
            },
        )


# --- the naive first draft -------------------------------------------------------------------------------


def _dig(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for key in path.split("."):
        value = value[key]
    return value


def _strip(record: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    record = copy.deepcopy(record)
    for name in names:
        *parents, leaf = name.split(".")
        node = record
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return record


def _url(config: DestinationConfig, data: dict[str, Any]) -> str:
    endpoint = BY_KEY[config.template]
    path = endpoint.path
    if endpoint.id_param:
        value = re.sub(r"\{([^{}]+)\}", lambda m: str(_dig(data, m.group(1))), config.id_value)
        path = path.replace("{" + endpoint.id_param + "}", quote(value, safe=""))
    return BASE + path


def naive(raw: dict[str, Any], rows: list[tuple[int, dict[str, Any]]]) -> list[RequestSpec]:
    out: list[RequestSpec] = []
    batch_config = DestinationConfig.from_json(raw).batching
    if not batch_config.enabled:
        for seq, data in rows:
            config = DestinationConfig.from_json(raw)  # re-read per record
            endpoint = BY_KEY[config.template]
            body = json.dumps(_strip(data, config.exclude), indent=2).encode() if endpoint.has_body else None
            out.append(RequestSpec(endpoint.method, _url(config, data), body, (seq,)))
        return out
    groups: list[tuple[str, list[tuple[int, dict[str, Any]]]]] = []
    for seq, data in rows:
        config = DestinationConfig.from_json(raw)
        url = _url(config, data)
        group = next((g for g in reversed(groups) if g[0] == url and len(g[1]) < config.batching.size), None)
        if group is None:
            group = (url, [])
            groups.append(group)
        group[1].append((seq, _strip(data, config.exclude)))
    for url, members in groups:
        config = DestinationConfig.from_json(raw)
        rows_out = [row for _, row in members]
        if config.batching.algorithm == "code":
            env = ImmutableSandboxedEnvironment(undefined=StrictUndefined)  # compiled per batch
            text = env.from_string(config.batching.code).render(records=rows_out)
            body = json.dumps(json.loads(text), indent=2).encode()
        else:
            envelope = {
                config.batching.property_name: rows_out,
                **json.loads(config.batching.other_props or "{}"),
            }
            body = json.dumps(envelope, indent=2).encode()
        out.append(RequestSpec("POST", url, body, tuple(seq for seq, _ in members)))
    return out


# --- measuring -------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    rows = list(records(N))
    print(f"build_requests: {N:,} records, Python {platform.python_version()}")
    print(
        f"{'case':<42}{'ours req/s':>12}{'ours rec/s':>12}{'naive req/s':>13}{'naive rec/s':>13}{'speed-up':>10}"
    )
    for name, raw in CASES.items():
        config = DestinationConfig.from_json(raw)
        build_requests(config, rows[:1000], BASE)  # warm the plan and template caches
        ours_s, ours = timed(lambda config=config: build_requests(config, rows, BASE))
        naive_s, slow = timed(lambda raw=raw: naive(raw, rows))
        assert [s.seqs for s in ours] == [s.seqs for s in slow], name
        print(
            f"{name:<42}{len(ours) / ours_s:>12,.0f}{N / ours_s:>12,.0f}"
            f"{len(slow) / naive_s:>13,.0f}{N / naive_s:>13,.0f}{naive_s / ours_s:>9.1f}x"
        )

    config = DestinationConfig.from_json(CASES["single: Update Private Offer, {id} macro"])
    batched = DestinationConfig.from_json(CASES["batched: property, size 100"])
    print()
    print(f"{'preview (3 requests)':<42}{'from 1k':>12}{'from 1M':>12}")
    for label, cfg in (("single", config), ("batched property, size 100", batched)):
        small, _ = timed(lambda cfg=cfg: preview(cfg, records(1_000), BASE, limit=3))
        large, shown = timed(lambda cfg=cfg: preview(cfg, records(1_000_000), BASE, limit=3))
        assert len(shown) == 3
        print(f"{label:<42}{small * 1000:>10.2f}ms{large * 1000:>10.2f}ms")
    full, _ = timed(lambda: build_requests(config, records(1_000_000), BASE)[:3])
    print(f"{'baseline: build all 1M, then take 3':<42}{'':>12}{full * 1000:>10.0f}ms")


if __name__ == "__main__":
    main()
