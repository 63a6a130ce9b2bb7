"""Personalised FL over HTTP: each device's own held-out metric, reported signed, summarised for the run.

A device that personalises (``DeviceConfig.personalize``: ``finetune | fedper | ditto``) evaluates, once
the run is done, the final global model and its personalised model on its own held-out data and sends
both in a ``POST /v1/device/metrics`` request (an envelope signed with its identity key, like every
device request; ``docs/protocol.md``). The server keeps each report as a ``device_metrics`` event (the
last report of a device counts) and :func:`personalization_summary` gives the distribution over
devices: mean and worst decile of the personalised and of the global model's per-device metric.
"""

from __future__ import annotations

import json
import math
from typing import Any

from qflare.errors import InvalidInput
from qflare.fl.per_device import summarize

__all__ = ["METHODS", "parse_report", "personalization_summary"]

METHODS = ("finetune", "fedper", "ditto")
EVENT_KIND = "device_metrics"
_FIELDS = {"method", "metric", "global", "personalized", "num_examples"}


def parse_report(payload: bytes, metric: str) -> dict[str, Any]:
    """A device's metrics report, checked (``bad_metrics_report`` names what is wrong)."""
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"metrics report: {why}", reason="bad_metrics_report")

    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise bad("not JSON") from None
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise bad(f"a JSON object with exactly the keys {', '.join(sorted(_FIELDS))}")
    if doc["method"] not in METHODS:
        raise bad(f"method must be one of {', '.join(METHODS)}")
    if doc["metric"] != metric:
        raise bad(f"metric must be {metric!r} (this server's task)")
    for key in ("global", "personalized"):
        value = doc[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise bad(f"{key} must be a finite number >= 0")
        if metric == "accuracy" and value > 1:
            raise bad(f"{key} is an accuracy: at most 1")
    n = doc["num_examples"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad("num_examples must be an integer >= 1 (the held-out examples)")
    return {k: doc[k] for k in sorted(_FIELDS)}


def personalization_summary(repo: Any, metric: str) -> dict[str, Any]:
    """The latest report of each device and their distribution (empty ``per_device`` if none came)."""
    latest: dict[str, dict[str, Any]] = {}
    for event in repo.list_events(kind=EVENT_KIND, limit=100_000):  # newest first
        if event.device_id is not None and event.device_id not in latest and event.detail:
            latest[event.device_id] = json.loads(event.detail)
    per_device = [{"device_id": d, **latest[d]} for d in sorted(latest)]
    out: dict[str, Any] = {"reports": len(per_device), "per_device": per_device}
    if per_device:
        out["personalize"] = sorted({r["method"] for r in per_device})
        out.update(summarize(metric, "personalized", [r["personalized"] for r in per_device]))
        out.update(summarize(metric, "global", [r["global"] for r in per_device]))
    return out
