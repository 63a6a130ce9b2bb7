"""Operator commands over the authenticated admin API: ``qflare status``, ``rounds``, ``model``, ``events``."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qflare.cli.console import make_console
from qflare.cli.operator import DEFAULT_SERVER, OperatorClient, resolve_operator_token
from qflare.errors import ConfigError, QFlareError

console = make_console()

Server = Annotated[str, typer.Option("--server", envvar="QFLARE_SERVER", help="server URL")]
AdminToken = Annotated[str | None, typer.Option("--admin-token", help="operator token (or $QFLARE_ADMIN_TOKEN)")]
CAFile = Annotated[Path | None, typer.Option("--ca-file", help="pinned CA for an HTTPS server")]
JsonOut = Annotated[bool, typer.Option("--json", help="print the answer as JSON")]

rounds_app = typer.Typer(help="Training rounds (operator): list, show.", no_args_is_help=True)
model_app = typer.Typer(help="Global models (operator): export.", no_args_is_help=True)


def _client(server: str, admin_token: str | None, ca_file: Path | None) -> OperatorClient:
    verify: Any = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    return OperatorClient(server, resolve_operator_token(admin_token), verify=verify)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _metric(metrics: dict[str, Any] | None, name: str) -> str:
    v = (metrics or {}).get(name)
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def status(server: Server = DEFAULT_SERVER, admin_token: AdminToken = None, ca_file: CAFile = None,
           json_out: JsonOut = False) -> None:
    """The run at a glance: rounds, latest metric, updates, refusals, devices (operator)."""
    with _client(server, admin_token, ca_file) as op:
        s = op.request("GET", "/v1/admin/status")
    if json_out:
        print(json.dumps(s, sort_keys=True))
        return
    cur = s["current_round"]
    table = Table(title="QFLARE status", show_header=False)
    rows = [
        ("task", s["task"]),
        ("rounds", f"{s['rounds_completed']} of {s['rounds_total']} aggregated, {s['rounds_failed']} failed"
         + (" (finished)" if s["finished"] else "")),
        ("current round", f"{cur['round_id']}: {s['current_round_updates']} of {len(cur['selected'])} updates, "
         f"deadline {_when(cur['deadline_at'])} UTC" if cur else "-"),
        (f"latest {s['metric']}", _metric(s["latest_metrics"], s["metric"])),
        ("latest model", "-" if s["latest_model_version"] is None else f"version {s['latest_model_version']}"),
        ("updates", f"{s['accepted_updates']} accepted, {s['rejected_updates']} rejected"),
        ("refused requests", str(s["rejected_requests"])),
        ("devices", f"{s['devices_active']} active of {s['devices_registered']} registered"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


@rounds_app.command("list")
def rounds_list(server: Server = DEFAULT_SERVER, admin_token: AdminToken = None, ca_file: CAFile = None,
                json_out: JsonOut = False) -> None:
    """Every round: status, updates, metric, times (operator)."""
    with _client(server, admin_token, ca_file) as op:
        rounds = op.request("GET", "/v1/admin/rounds")
    if json_out:
        print(json.dumps(rounds, sort_keys=True))
        return
    table = Table("round", "status", "selected", "updates", "accuracy", "mae", "loss", "opened (UTC)",
                  "closed (UTC)", "close reason", "model", title="rounds")
    for r in rounds:
        m = r["metrics"] or {}
        table.add_row(str(r["round_id"]), r["status"], str(len(r["selected"])), _metric(m, "num_updates"),
                      _metric(m, "accuracy"), _metric(m, "mae"), _metric(m, "loss"), _when(r["opened_at"]),
                      _when(r["closed_at"]), r["close_reason"] or "-",
                      "-" if r["new_version"] is None else str(r["new_version"]),
                      style="red" if r["status"] == "failed" else None)
    console.print(table)


@rounds_app.command("show")
def rounds_show(round_id: Annotated[int, typer.Argument(help="the round's id")], server: Server = DEFAULT_SERVER,
                admin_token: AdminToken = None, ca_file: CAFile = None, json_out: JsonOut = False) -> None:
    """One round: its fields, metrics and the updates it accepted (operator)."""
    with _client(server, admin_token, ca_file) as op:
        d = op.request("GET", f"/v1/admin/rounds/{round_id}")
    if json_out:
        print(json.dumps(d, sort_keys=True))
        return
    r = d["round"]
    head = Table(title=f"round {r['round_id']}", show_header=False)
    for k in ("status", "base_version", "new_version", "close_reason"):
        head.add_row(k, "-" if r[k] is None else str(r[k]))
    head.add_row("opened / deadline / closed (UTC)",
                 f"{_when(r['opened_at'])} / {_when(r['deadline_at'])} / {_when(r['closed_at'])}")
    head.add_row("selected", ", ".join(r["selected"]))
    for k, v in sorted((r["metrics"] or {}).items()):
        head.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(head)
    ups = Table("device", "examples", "train loss", "bytes", "sha256", "received (UTC)", title="accepted updates")
    for u in d["updates"]:
        ups.add_row(u["device_id"], str(u["num_examples"]), _metric(u, "train_loss"), str(u["size_bytes"]),
                    u["sha256"][:16], _when(u["received_at"]))
    console.print(ups)


@model_app.command("export")
def model_export(
    version: Annotated[int, typer.Option("--version", help="model version (qflare status: latest model)")],
    out: Annotated[Path, typer.Option("--out", help="file to write")],
    fmt: Annotated[str, typer.Option("--format", help="safetensors (as stored) | torch (a state_dict, torch.save)")]
    = "safetensors",
    server: Server = DEFAULT_SERVER, admin_token: AdminToken = None, ca_file: CAFile = None,
) -> None:
    """Download a global model, check its SHA-256 against the stored one, write it (operator)."""
    if fmt not in ("safetensors", "torch"):
        raise ConfigError(f"--format: {fmt!r} is not one of safetensors, torch", reason="bad_option")
    with _client(server, admin_token, ca_file) as op:
        resp = op.raw("GET", f"/v1/admin/models/{version}/safetensors")
    blob, expected = resp.content, resp.headers.get("x-qflare-sha256", "")
    if hashlib.sha256(blob).hexdigest() != expected:
        raise QFlareError(f"model {version}: the bytes received do not hash to the stored SHA-256",
                          reason="model_hash_mismatch")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        out.write_bytes(blob)
    else:
        import torch
        from safetensors.torch import load

        torch.save(load(blob), out)
    console.print(f"model version {version} ({fmt}, sha256 {expected[:16]}...) written to {out}")


def events(
    kind: Annotated[str | None, typer.Option(help="only this kind, e.g. update_rejected, device_revoked")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="newest N")] = 50,
    server: Server = DEFAULT_SERVER, admin_token: AdminToken = None, ca_file: CAFile = None,
    json_out: JsonOut = False,
) -> None:
    """The audit trail as a table: enrolments, rounds, refusals, revocations (operator)."""
    params: dict[str, Any] = {"limit": limit, **({"kind": kind} if kind else {})}
    with _client(server, admin_token, ca_file) as op:
        rows = op.raw("GET", "/v1/admin/events", params=params).json()
    if json_out:
        print(json.dumps(rows, sort_keys=True))
        return
    table = Table("id", "time (UTC)", "kind", "device", "round", "reason", "detail", title="events")
    for e in rows:
        table.add_row(str(e["event_id"]), _when(e["ts"]), e["kind"], e["device_id"] or "-",
                      "-" if e["round_id"] is None else str(e["round_id"]), e["reason"] or "-",
                      (e["detail"] or "")[:60], style="red" if "reject" in e["kind"] else None)
    console.print(table)
