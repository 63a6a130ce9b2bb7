"""``qflare ledger``: verify, prove, show and audit the server's transparency log (docs/ledger.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qflare.errors import ConfigError, LedgerIntegrityError, MalformedPayload
from qflare.ledger import HybridLogKey, LogStore, MemoryLogStore, TransparencyLog, verify_inclusion, verify_log
from qflare.ledger.checkpoint import parse_checkpoint
from qflare.ledger.entries import LedgerEvent, decode_event, event_fields
from qflare.ledger.merkle import leaf_hash
from qflare.ledger.tiles import entries_path, parse_entry_bundle, tile_path, tiles_for_size

app = typer.Typer(help="The audit ledger: verify the log, prove inclusion, show and audit entries.",
                  no_args_is_help=True)
console = Console()

DEFAULT_ORIGIN = "qflare.local/ledger"  # qflare.server.ledger.DEFAULT_ORIGIN

Db = Annotated[str | None, typer.Option("--db", help="database URL, e.g. sqlite:///runs/<ts>/qflare.db")]
Url = Annotated[str | None, typer.Option("--url", help="server base URL, e.g. http://127.0.0.1:8000")]
Key = Annotated[
    Path | None,
    typer.Option("--key", help="the log's public key file (ledger-log.pub: the enclave's signing key when "
                               "an enclave runs); default: server-keys/ledger-log.pub (else server-sign.pub) "
                               "beside a SQLite database, or (--url) the keys the server publishes"),
]
Origin = Annotated[str, typer.Option(help="the checkpoint origin line")]


@dataclass
class _Source:
    store: LogStore
    key: HybridLogKey
    origin: str
    trusted_key: bool


def _key_from_file(path: Path, origin: str) -> HybridLogKey:
    from qflare.crypto.keyfile import read_public_key
    from qflare.crypto.signing import VerifyKey

    pub = read_public_key(path)
    if not isinstance(pub, VerifyKey):
        raise ConfigError(f"{path} is not a signing public key", reason="bad_log_key")
    return HybridLogKey.from_verify_key(origin, pub)


def _fetch_store(url: str) -> tuple[MemoryLogStore, dict[str, Any]]:
    """Mirror a served log into memory: entry bundles, hash tiles and every checkpoint."""
    import httpx

    base = url.rstrip("/")
    with httpx.Client(timeout=30) as c:

        def get(path: str) -> httpx.Response:
            r = c.get(f"{base}{path}")
            r.raise_for_status()
            return r

        info = get("/v1/ledger/keys").json()
        cps = get("/v1/ledger/checkpoints").json()["checkpoints"]
        size = max([int(info["size"])] + [0])
        store = MemoryLogStore()
        entries: list[bytes] = []
        for n in range((size + 255) // 256):
            width = 0 if (n + 1) * 256 <= size else size - n * 256
            entries.extend(parse_entry_bundle(get("/ledger/" + entries_path(n, width)).content))
        tiles: dict[tuple[int, int], bytes] = {}
        for level, full, partial in tiles_for_size(size):
            for n in range(full):
                tiles[(level, n)] = get("/ledger/" + tile_path(level, n)).content
            if partial:
                tiles[(level, full)] = get("/ledger/" + tile_path(level, full, partial)).content
    store.entries = entries
    store.leaf_hashes = [leaf_hash(e) for e in entries]
    store.tiles = tiles
    for cp in cps:
        store.add_checkpoint(int(cp["size"]), cp["note"].encode())
    return store, info


def _open(db: str | None, url: str | None, key: Path | None, origin: str) -> _Source:
    if (db is None) == (url is None):
        raise typer.BadParameter("give exactly one of --db and --url")
    if db is not None:
        from qflare.server.storage.ledger_store import SqlLogStore

        if key is None and db.startswith("sqlite:///"):
            # The log key the server wrote at start (the enclave's signing key when an enclave signs the
            # checkpoints), else the server's own key (a log written before that file existed).
            keys = Path(db.removeprefix("sqlite:///")).parent / "server-keys"
            key = next((k for k in (keys / "ledger-log.pub", keys / "server-sign.pub") if k.exists()), None)
        if key is None:
            raise ConfigError("pass --key (server-keys/ledger-log.pub) to check the checkpoints",
                              reason="no_log_key")
        return _Source(SqlLogStore(db), _key_from_file(key, origin), origin, True)
    assert url is not None
    store, info = _fetch_store(url)
    if key is not None:
        return _Source(store, _key_from_file(key, info["origin"]), info["origin"], True)
    return _Source(store, HybridLogKey.from_verifier_keys(info["ed25519_vkey"], info["mldsa65_vkey"]),
                   info["origin"], False)


def _decoded(store: LogStore) -> list[tuple[int, bytes, LedgerEvent | None]]:
    out: list[tuple[int, bytes, LedgerEvent | None]] = []
    for i, data in enumerate(store.read_entries(0, store.size())):
        try:
            out.append((i, data, decode_event(data)))
        except MalformedPayload:
            out.append((i, data, None))
    return out


def _latest_verified(src: _Source) -> tuple[int, bytes]:
    """``(size, root)`` of the latest checkpoint, its signatures checked."""
    latest = src.store.latest_checkpoint()
    if latest is None:
        raise LedgerIntegrityError("the log has no checkpoint yet", reason="no_checkpoint")
    cp = parse_checkpoint(src.key.open(latest.note).text, origin=src.origin)
    return cp.size, cp.root


@app.command("verify")
def verify(db: Db = None, url: Url = None, key: Key = None, origin: Origin = DEFAULT_ORIGIN) -> None:
    """Recompute every root from the stored leaves; check every checkpoint's signatures and consistency."""
    src = _open(db, url, key, origin)
    if not src.trusted_key:
        console.print("[yellow]warning[/] no --key: checking against the keys the server itself publishes")
    report = verify_log(src.store, src.key, origin=src.origin, entry_key=src.key.verify_key())
    if report.ok:
        console.print(f"[green]ok[/] {report.size} entries ({report.signed_entries} update/aggregate entries "
                      f"signed by the log key), {report.checkpoints_checked} checkpoints verified "
                      f"(origin {src.origin})", soft_wrap=True)
        return
    first = report.problems[0]
    where = f"entry {report.first_bad_index}" if report.first_bad_index is not None else (
        f"checkpoint {first.checkpoint}" if first.checkpoint is not None else "the log")
    console.print(f"[bold red]FAILED[/] first bad: {where} ({first.reason}: {first.message})", soft_wrap=True)
    for p in report.problems[1:10]:
        console.print(f"  also: {p.reason}: {p.message}", soft_wrap=True)
    raise typer.Exit(1)


def _prove(src: _Source, lh: bytes) -> tuple[int, int, list[bytes], bytes]:
    size, root = _latest_verified(src)
    log = TransparencyLog(src.store, origin=src.origin)
    index, proof = log.prove_inclusion(lh, size)
    verify_inclusion(lh, index, size, proof, root)
    return index, size, proof, root


@app.command("prove")
def prove(
    leaf: Annotated[str, typer.Option("--leaf", help="leaf hash (64 hex digits)")],
    db: Db = None, url: Url = None, key: Key = None, origin: Origin = DEFAULT_ORIGIN,
) -> None:
    """Inclusion proof of a leaf hash in the latest signed checkpoint, verified here."""
    try:
        lh = bytes.fromhex(leaf)
    except ValueError:
        raise typer.BadParameter("--leaf must be hex") from None
    if len(lh) != 32:
        raise typer.BadParameter("--leaf must be 32 bytes")
    src = _open(db, url, key, origin)
    index, size, proof, root = _prove(src, lh)
    console.print(f"[green]included[/] leaf {index} of the signed tree of size {size}, root {root.hex()}")
    for p in proof:
        console.print(f"  {p.hex()}")


def _summary(ev: LedgerEvent | None) -> tuple[str, str, str, str]:
    if ev is None:
        return "?", "", "", "[red]undecodable entry[/]"
    f = event_fields(ev)
    device = str(f.pop("device_id", "") or "")
    rnd = f.pop("round_id", None)
    f.pop("time_ms", None)
    rest = " ".join(f"{k}={v}" for k, v in f.items())
    return ev.EVENT, device, "" if rnd is None else str(rnd), rest


@app.command("show")
def show(
    db: Db = None, url: Url = None, key: Key = None, origin: Origin = DEFAULT_ORIGIN,
    device: Annotated[str | None, typer.Option("--device", help="only entries about this device")] = None,
    round_id: Annotated[int | None, typer.Option("--round", help="only entries of this round")] = None,
) -> None:
    """The log's entries as a table, filterable by device and round."""
    src = _open(db, url, key, origin)
    table = Table(title=f"ledger {src.origin} ({src.store.size()} entries)")
    for col in ("#", "event", "device", "round", "details"):
        table.add_column(col, overflow="fold")
    for i, _data, ev in _decoded(src.store):
        name, dev, rnd, rest = _summary(ev)
        participants = [p[0] for p in getattr(ev, "participants", ())]
        if device is not None and dev != device and device not in participants:
            continue
        if round_id is not None and rnd != str(round_id):
            continue
        table.add_row(str(i), name, dev, rnd, rest)
    console.print(table)


@app.command("audit")
def audit(
    round_id: Annotated[int, typer.Option("--round", help="the round to audit")],
    db: Db = None, url: Url = None, key: Key = None, origin: Origin = DEFAULT_ORIGIN,
) -> None:
    """Who contributed what to a round, with which weight, each entry proven in the latest signed checkpoint."""
    src = _open(db, url, key, origin)
    size, root = _latest_verified(src)
    log = TransparencyLog(src.store, origin=src.origin)
    rows = [(i, d, ev) for i, d, ev in _decoded(src.store) if getattr(ev, "round_id", None) == round_id]
    if not rows:
        console.print(f"[yellow]no entries for round {round_id}[/]")
        raise typer.Exit(1)
    weights: dict[str, float] = {}
    for _i, _d, ev in rows:
        weights.update(dict(getattr(ev, "participants", ())))
    total = sum(weights.values()) or 1.0
    table = Table(title=f"round {round_id}: signed tree size {size}, root {root.hex()[:16]}…")
    for col in ("#", "event", "device", "samples", "norm", "weight", "envelope / model sha256", "inclusion"):
        table.add_column(col, overflow="fold")
    bad = 0
    for i, data, ev in rows:
        assert ev is not None
        f = event_fields(ev)
        if i < size:
            proof = log.inclusion_proof(i, size)
            try:
                verify_inclusion(leaf_hash(data), i, size, proof, root)
                proven = f"[green]ok[/] ({len(proof)} hashes)"
            except LedgerIntegrityError as exc:
                proven, bad = f"[red]{exc.reason}[/]", bad + 1
        else:
            proven = "[yellow]after the latest checkpoint[/]"
        dev = str(f.get("device_id") or "")
        w = f"{weights[dev] / total:.3f} ({weights[dev]:g})" if dev in weights else ""
        table.add_row(str(i), ev.EVENT, dev, str(f.get("sample_count", "")), str(f.get("update_norm", "")), w,
                      str(f.get("envelope_sha256") or f.get("model_sha256") or ""), proven)
        if ev.EVENT == "aggregate_published":
            for d, wt in weights.items():
                table.add_row("", "  participant", d, "", "", f"{wt / total:.3f} ({wt:g})", "", "")
    console.print(table)
    if bad:
        raise typer.Exit(1)
