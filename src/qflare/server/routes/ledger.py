"""The audit ledger's read API: C2SP tlog-tiles under ``/ledger/`` and JSON proofs under ``/v1/ledger/``.

Unauthenticated and read-only. Bad or out-of-range input answers 400 (``invalid_input`` family) or
404 (not there yet), never 500: every number is parsed here, not by FastAPI (whose 422 is not wanted).
"""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from qflare.errors import InvalidInput, LedgerIntegrityError, MalformedPayload, NotFound
from qflare.ledger.checkpoint import parse_checkpoint
from qflare.ledger.entries import decode_event, event_fields
from qflare.ledger.merkle import leaf_hash
from qflare.ledger.note import parse_note
from qflare.ledger.tiles import parse_tile_path
from qflare.server.deps import State
from qflare.server.ledger import AuditLog
from qflare.server.openapi import error_responses
from qflare.server.state import ServerState

router = APIRouter(tags=["ledger"], responses=error_responses())

_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,18})")
_HASH = re.compile(r"[0-9a-fA-F]{64}")
_NOTE_TYPE = "text/plain; charset=utf-8"
_MAX_COSIGNATURE_BODY = 4096
MAX_AUDIT_LEAVES = 64
"""The most leaf hashes one ``/v1/ledger/audit`` request may ask inclusion proofs for."""


def _audit(state: ServerState) -> AuditLog:
    if state.ledger is None:
        raise NotFound("this server keeps no audit ledger", reason="no_ledger")
    return state.ledger


def _int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not _DECIMAL.fullmatch(value) or int(value) >= 1 << 63:
        raise InvalidInput(f"{name} must be a decimal integer in [0, 2^63)", reason="invalid_number")
    return int(value)


def _required_int(value: str | None, name: str) -> int:
    n = _int(value, name)
    if n is None:
        raise InvalidInput(f"{name} is required", reason="missing_parameter")
    return n


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


# -- C2SP tlog-tiles ------------------------------------------------------------------------------
@router.get("/ledger/checkpoint", response_class=Response)
def checkpoint(state: State) -> Response:
    """The latest signed checkpoint (a C2SP signed note)."""
    audit = _audit(state)
    note = audit.cosigned_checkpoint()  # with the witnesses' cosignature lines
    if note is None:
        raise NotFound("no checkpoint has been issued yet", reason="no_checkpoint")
    return Response(note, media_type=_NOTE_TYPE, headers={"Cache-Control": "no-cache"})


@router.post("/ledger/cosignature", response_class=Response)
async def cosignature(request: Request, state: State) -> Response:
    """A witness pushes its cosignature of the latest checkpoint: body ``<witness vkey>\n<cosignature line>``.

    Kept when it verifies over the latest checkpoint; served with it at ``/ledger/checkpoint``.
    """
    audit = _audit(state)
    body = await request.body()
    if len(body) > _MAX_COSIGNATURE_BODY:
        raise InvalidInput("cosignature body too large", reason="malformed_request")
    head, sep, lines = body.partition(b"\n")
    try:
        vkey = head.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInput("the first line must be the witness verifier key", reason="malformed_request") from None
    if not sep:
        raise InvalidInput("the first line must be the witness verifier key", reason="malformed_request")
    try:
        kept = audit.add_cosignatures(vkey, lines)
    except LedgerIntegrityError as exc:  # not over the latest checkpoint: the caller's fault (400)
        raise InvalidInput(exc.message, reason=exc.reason) from None
    return Response(f"{kept}\n", media_type=_NOTE_TYPE)


@router.get("/ledger/tile/{path:path}", response_class=Response)
def tile(path: str, state: State) -> Response:
    """``tile/<L>/<N>[.p/<W>]`` (hash tile) or ``tile/entries/<N>[.p/<W>]`` (entry bundle)."""
    audit = _audit(state)
    level, index, width = parse_tile_path("tile/" + path)  # MalformedPayload (400) if not canonical
    with audit.lock:
        data = audit.log.entry_bundle(index, width) if level is None else audit.log.tile(level, index, width)
    # Full tiles never change; a partial one is replaced by a wider one as the log grows.
    cache = "public, max-age=31536000, immutable" if width == 0 else "no-cache"
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": cache})


# -- JSON -----------------------------------------------------------------------------------------
@router.get("/v1/ledger/keys")
def keys(state: State) -> dict[str, Any]:
    """The log's origin, its two note verifier keys (Ed25519, ML-DSA-65) and its current size."""
    audit = _audit(state)
    ed, mldsa = audit.log_key.verifier_keys()
    with audit.lock:
        size = audit.log.size()
    return {"origin": audit.origin, "ed25519_vkey": ed, "mldsa65_vkey": mldsa, "size": size}


@router.get("/v1/ledger/checkpoints")
def checkpoints(state: State) -> dict[str, Any]:
    """Every checkpoint issued, oldest first (what ``qflare ledger verify --url`` checks)."""
    audit = _audit(state)
    return {"checkpoints": [{"size": c.size, "note": c.note.decode("utf-8", "replace")}
                            for c in audit.store.read_checkpoints()]}


@router.get("/v1/ledger/entries/{index}")
def entry(index: str, state: State) -> dict[str, Any]:
    """The entry at ``index``: its bytes (base64), leaf hash and decoded event."""
    audit = _audit(state)
    i = _required_int(index, "index")
    with audit.lock:
        data = audit.log.entry(i)  # NotFound (404) outside the log
    try:
        event: dict[str, Any] | None = {"event": decode_event(data).EVENT,
                                        **_json_value(event_fields(decode_event(data)))}
    except MalformedPayload:
        event = None
    return {"index": i, "entry": base64.b64encode(data).decode(), "leaf_hash": leaf_hash(data).hex(), "event": event}


def _default_size(audit: AuditLog) -> int:
    latest = audit.store.latest_checkpoint()
    return latest.size if latest is not None and latest.size > 0 else audit.log.size()


@router.get("/v1/ledger/proof/inclusion")
def inclusion(state: State, leaf_hash: str | None = None, tree_size: str | None = None) -> dict[str, Any]:
    """Inclusion proof of a leaf hash (hex) in the tree of ``tree_size`` (default: the latest checkpoint)."""
    audit = _audit(state)
    if leaf_hash is None or not _HASH.fullmatch(leaf_hash):
        raise InvalidInput("leaf_hash must be 64 hex digits", reason="invalid_leaf_hash")
    size = _int(tree_size, "tree_size")
    with audit.lock:
        s = _default_size(audit) if size is None else size
        index, proof = audit.log.prove_inclusion(bytes.fromhex(leaf_hash), s)
        root = audit.log.root(s)
    return {"leaf_index": index, "tree_size": s, "leaf_hash": leaf_hash.lower(),
            "proof": [p.hex() for p in proof], "root_hash": root.hex()}


@router.get("/v1/ledger/proof/consistency")
def consistency(state: State, first: str | None = None, second: str | None = None) -> dict[str, Any]:
    """Consistency proof between the trees of sizes ``first`` and ``second`` (default: the current size)."""
    audit = _audit(state)
    a = _required_int(first, "first")
    b = _int(second, "second")
    with audit.lock:
        s2 = audit.log.size() if b is None else b
        proof = audit.log.consistency_proof(a, s2)  # InvalidInput (400) when out of range
        roots = audit.log.root(a), audit.log.root(s2)
    return {"first": a, "second": s2, "proof": [p.hex() for p in proof],
            "first_root": roots[0].hex(), "second_root": roots[1].hex()}


@router.get("/v1/ledger/audit")
def audit_bundle(
    state: State,
    first: str | None = None,
    leaf_hash: Annotated[list[str] | None, Query(description=(
        f"a leaf hash (64 hex digits) to prove included; repeatable, at most {MAX_AUDIT_LEAVES}"))] = None,
) -> dict[str, Any]:
    """A device's whole ledger audit in one answer (``docs/ledger.md``, "Devices as auditors"): the latest
    cosigned checkpoint note (as ``/ledger/checkpoint``), the consistency proof from the tree of size
    ``first`` (the device's last verified size) to that checkpoint's size (as
    ``/v1/ledger/proof/consistency``; ``null`` unless ``0 < first < size``), and the inclusion proof of each
    ``leaf_hash`` in that checkpoint's tree (as ``/v1/ledger/proof/inclusion``; ``leaf_index`` ``null`` for
    a leaf not in it). All three read under one lock, so they are about the same tree. Nothing here is
    trusted by the device: it verifies the note's signatures and every proof exactly as with the three
    separate routes."""
    audit = _audit(state)
    a = _int(first, "first") or 0
    leaves = leaf_hash or []
    if len(leaves) > MAX_AUDIT_LEAVES:
        raise InvalidInput(f"at most {MAX_AUDIT_LEAVES} leaf_hash values", reason="too_many_leaves")
    for h in leaves:
        if not _HASH.fullmatch(h):
            raise InvalidInput("leaf_hash must be 64 hex digits", reason="invalid_leaf_hash")
    with audit.lock:
        note = audit.cosigned_checkpoint()
        if note is None:
            raise NotFound("no checkpoint has been issued yet", reason="no_checkpoint")
        size = parse_checkpoint(parse_note(note)[0], origin=audit.origin).size
        consistency: dict[str, Any] | None = None
        if 0 < a < size:
            proof = audit.log.consistency_proof(a, size)
            consistency = {"first": a, "second": size, "proof": [p.hex() for p in proof]}
        inclusion: list[dict[str, Any]] = []
        for h in leaves:
            index: int | None = None
            path: list[bytes] = []
            if size > 0:  # an empty tree holds no leaf
                try:
                    index, path = audit.log.prove_inclusion(bytes.fromhex(h), size)
                except NotFound:
                    pass
            inclusion.append({"leaf_hash": h.lower(), "leaf_index": index, "proof": [p.hex() for p in path]})
    return {"checkpoint": note.decode("utf-8"), "tree_size": size, "consistency": consistency,
            "inclusion": inclusion}
