"""Poll a QFLARE log, cosign its new checkpoints, and push the cosignatures back to it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

from qflare.errors import LedgerIntegrityError, QFlareError
from qflare.ledger.checkpoint import parse_checkpoint
from qflare.ledger.note import parse_note
from qflare.ledger.witness import format_add_checkpoint_request
from qflare.witness.core import Witness

__all__ = ["LogUnavailable", "poll_forever", "poll_once"]

log = logging.getLogger("qflare.witness")


class LogUnavailable(QFlareError):
    """The log could not be read (network, 5xx); retried at the next poll."""

    default_reason = "log_unavailable"


def _get(http: httpx.Client, path: str, params: dict[str, int] | None = None) -> httpx.Response:
    try:
        resp = http.get(path, params=params)
    except httpx.TransportError as exc:
        raise LogUnavailable(f"cannot reach the log: {exc}") from None
    if resp.status_code >= 400:
        raise LogUnavailable(f"the log answered {resp.status_code}: {resp.text[:200]}")
    return resp


def poll_once(http: httpx.Client, witness: Witness) -> int | None:
    """Fetch the log's checkpoint, cosign it if consistent, push the cosignature; return its size.

    ``None`` when the log has no checkpoint yet.

    Raises
    ------
    LedgerIntegrityError / qflare.errors.InvalidInput
        The log forked, rolled back or signed with another key: the witness refuses (and keeps refusing).
    LogUnavailable
        The log could not be read or took no cosignature.
    """
    try:
        resp = http.get("/ledger/checkpoint")
    except httpx.TransportError as exc:
        raise LogUnavailable(f"cannot reach the log: {exc}") from None
    if resp.status_code == 404:
        return None
    if resp.status_code >= 400:
        raise LogUnavailable(f"the log answered {resp.status_code}: {resp.text[:200]}")
    note = resp.content
    cp = parse_checkpoint(parse_note(note)[0], origin=witness.origin)  # unverified: only to size the proof
    old = witness.size
    proof: list[bytes] = []
    if 0 < old < cp.size:
        body = _get(http, "/v1/ledger/proof/consistency", {"first": old, "second": cp.size}).json()
        proof = [bytes.fromhex(h) for h in body["proof"]]
    lines = witness.add_checkpoint(format_add_checkpoint_request(old, proof, note))
    try:
        pushed = http.post("/ledger/cosignature", content=witness.verifier.verifier_key().encode() + b"\n" + lines)
    except httpx.TransportError as exc:
        raise LogUnavailable(f"cannot push the cosignature: {exc}") from None
    if pushed.status_code >= 400:
        raise LogUnavailable(f"the log refused the cosignature: {pushed.status_code} {pushed.text[:200]}")
    return cp.size


def poll_forever(http: httpx.Client, witness: Witness, *, interval: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """Poll every ``interval`` seconds; stop (raise) when the log misbehaves, retry when it is away."""
    while True:
        try:
            size = poll_once(http, witness)
            if size is not None:
                log.info("cosigned %s at size %d", witness.origin, size)
        except LogUnavailable as exc:
            log.warning("%s; retrying in %.0f s", exc.message, interval)
        except (LedgerIntegrityError, QFlareError) as exc:
            log.error("refusing to cosign %s: %s (%s)", witness.origin, exc.message, exc.reason)
            raise
        sleep(interval)
