"""What the dashboard verifies each time it is viewed: the enclave's quote, the ledger's checkpoint, the QKD link.

Each check gives a :class:`Check`: ``verified``, ``failed`` (with the stable reason and a one-line
message) or ``absent`` (nothing to check: no enclave, no checkpoint yet, no QKD device).

* **Enclave quote** (:func:`check_enclave_quote`): a fresh quote for a random nonce, verified as a device
  verifies it (:func:`qflare.enclave.verify.verify_quote`: platform signature, measurement, signer,
  security version, nonce, and the binding of the public keys the server serves). For the simulated
  backend the expected measurement is recomputed here from the enclave code on disk and its measured
  configuration, and the expected signer comes from the SIGSTRUCT, so an enclave that is not the one this
  server's code and configuration make fails (``wrong_measurement``, or the SIGSTRUCT's reason when it
  does not name that measurement). Under Gramine this host cannot
  recompute MRENCLAVE or check a DCAP signature chain: the check says so (``dcap_verifier_unavailable``).
* **Ledger checkpoint** (:func:`check_checkpoint`): the latest signed checkpoint opened with the published
  log key (``key_dir/ledger-log.pub``, what devices and ``qflare ledger verify`` pin; both signature halves
  required), its origin, its size within the log, its root equal to the log's root at that size, and the
  newest :data:`NEWEST_ENTRIES_PROVEN` entries proven included under that root from their stored bytes.
  ``qflare ledger verify`` re-hashes every entry; this check is meant to be cheap enough for every view.
* **QKD link** (:func:`qkd_link`): the server's KME's ETSI status for its link to a QKD device, with the
  BB84 link's figures from ``status_extension`` (the last frame's estimated QBER, its secret key rate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qflare.errors import QFlareError
from qflare.server.state import ServerState

__all__ = ["NEWEST_ENTRIES_PROVEN", "Check", "QkdLinkView", "check_checkpoint", "check_enclave_quote", "qkd_link"]

NEWEST_ENTRIES_PROVEN = 16


@dataclass(frozen=True)
class Check:
    """One verification's outcome: ``state``, the reason when it failed, and what an operator reads."""

    state: Literal["verified", "failed", "absent"]
    message: str
    reason: str | None = None

    @classmethod
    def failed(cls, exc: BaseException) -> Check:
        if isinstance(exc, QFlareError):
            return cls("failed", exc.message, exc.reason)
        return cls("failed", f"{type(exc).__name__}: {exc}", "check_error")


def check_enclave_quote(state: ServerState) -> Check:
    """Verify a fresh quote of the server's enclave against what this server expects it to be."""
    enclave = state.enclave
    if enclave is None:
        return Check("absent", f"no enclave (enclave.backend: {state.config.enclave.backend})")
    from qflare.enclave.verify import verify_quote

    nonce = os.urandom(32)
    try:
        measurement, signer, trust_root, source = _expected_identity(state)
        quote = enclave.quote(nonce)
        verified = verify_quote(
            quote, trust_root=trust_root, expected_measurement=measurement, expected_signer=signer, nonce=nonce,
            served_public_keys=enclave.public_keys(), allow_simulated=True, min_svn=1,
        )
    except Exception as exc:  # noqa: BLE001 - every failure is shown to the operator with its reason
        return Check.failed(exc)
    kind = "simulated enclave (demos only)" if verified.simulated else "SGX enclave"
    return Check("verified", f"a fresh {len(quote)}-byte quote verified: {kind}, measurement "
                             f"{verified.measurement.hex()[:16]}..., svn {verified.isv_svn}; expected identity "
                             f"{source}")


def _expected_identity(state: ServerState) -> tuple[bytes, bytes, Any, str]:
    """``(measurement, signer, trust root, where they come from)`` the quote must match."""
    from qflare.enclave.launcher import SimulatedLauncher
    from qflare.enclave.sigstruct import verify_sigstruct

    assert state.enclave is not None
    launcher = getattr(state.enclave.enclave, "launcher", None)
    if isinstance(launcher, SimulatedLauncher):
        expected = launcher.measurement()
        sig = verify_sigstruct(launcher.sigstruct_path.read_bytes(), measurement=expected.value, config=launcher.config)
        return expected.value, sig.signer, launcher.trust_root(), "recomputed from the enclave code and config"
    ident = state.enclave.identity()
    return ident.measurement, ident.signer, None, "as the enclave reports it (MRENCLAVE is not recomputed here)"


def check_checkpoint(state: ServerState) -> Check:
    """Verify the latest signed checkpoint against the published log key and the stored log."""
    ledger = state.ledger
    if ledger is None:
        return Check("absent", "no audit ledger on this server (ledger.enabled: false)")
    from qflare.crypto.keyfile import read_public_key
    from qflare.crypto.signing import VerifyKey
    from qflare.errors import ConfigError, LedgerIntegrityError
    from qflare.ledger import HybridLogKey, leaf_hash, parse_checkpoint, verify_inclusion
    from qflare.server.ledger import LOG_KEY_FILE

    key_file = Path(state.config.server.key_dir) / LOG_KEY_FILE
    try:
        with ledger.lock:
            note = ledger.log.latest_checkpoint()
            if note is None:
                return Check("absent", "no checkpoint yet (one is issued after each round)")
            try:
                public = read_public_key(key_file)
            except OSError as exc:
                raise ConfigError(f"cannot read the published log key {key_file}: {exc.strerror}",
                                  reason="log_key_missing") from None
            if not isinstance(public, VerifyKey):
                raise ConfigError(f"{key_file} is not a signing public key", reason="log_key_invalid")
            try:
                opened = HybridLogKey.from_verify_key(ledger.origin, public).open(note)
            except LedgerIntegrityError as exc:
                raise LedgerIntegrityError(f"the checkpoint does not verify under {key_file}: {exc.message}",
                                           reason=exc.reason) from None
            cp = parse_checkpoint(opened.text, origin=ledger.origin)
            if cp.size > ledger.log.size():
                ledger.log.refresh()  # another worker may have appended since this one read the log
            if cp.size > ledger.log.size():
                raise LedgerIntegrityError(f"the checkpoint has size {cp.size}, the log {ledger.log.size()} entries",
                                           reason="checkpoint_beyond_log")
            if cp.size and ledger.log.root(cp.size) != cp.root:
                raise LedgerIntegrityError(f"the log's root at size {cp.size} is not the signed root",
                                           reason="root_mismatch")
            first = max(0, cp.size - NEWEST_ENTRIES_PROVEN)
            entries = ledger.store.read_entries(first, cp.size)
            if len(entries) != cp.size - first:
                raise LedgerIntegrityError(f"entries {first}..{cp.size - 1} are missing", reason="missing_entry")
            for offset, entry in enumerate(entries):
                try:
                    verify_inclusion(leaf_hash(entry), first + offset, cp.size,
                                     ledger.log.inclusion_proof(first + offset, cp.size), cp.root)
                except LedgerIntegrityError:
                    raise LedgerIntegrityError(f"entry {first + offset} as stored is not included under the "
                                               "signed root", reason="entry_not_included") from None
    except Exception as exc:  # noqa: BLE001 - every failure is shown to the operator with its reason
        return Check.failed(exc)
    proven = f"; the newest {cp.size - first} entries proven included" if cp.size else ""
    return Check("verified", f"size {cp.size}, signed with both halves of {LOG_KEY_FILE}, root matches the "
                             f"log{proven}")


@dataclass(frozen=True)
class QkdLinkView:
    """The QKD link as the server's KME reports it."""

    kme_url: str
    check: Check
    peer: str | None = None
    stored_keys: int | None = None
    max_keys: int | None = None
    frames: int | None = None
    aborted_frames: int | None = None
    qber: float | None = None
    qber_abort: float | None = None
    key_bits_per_pulse: float | None = None
    distilled_key_bits: int | None = None
    last_abort_reason: str | None = None


def qkd_link(state: ServerState) -> QkdLinkView | None:
    """The KME's status of the link to the QKD device seen most recently (``None`` without QKD)."""
    cfg = state.config.qkd
    if cfg is None:
        return None
    devices = [d for d in state.repo.list_devices() if d.key_source != "mlkem" and d.status != "revoked"]
    if not devices:
        return QkdLinkView(cfg.kme_url, Check("absent", "no device uses QKD keys yet"))
    peer = max(devices, key=lambda d: (d.last_seen_at or 0.0, d.device_id)).device_id
    from qflare.qkd.client import KMEClient

    try:
        with KMEClient(cfg.kme_url, cert=cfg.cert, key=cfg.key, ca=cfg.ca,
                       timeout=min(cfg.timeout_seconds, 2.0)) as kme:  # a KME that is down slows the page 2 s
            status = kme.status(peer)
    except Exception as exc:  # noqa: BLE001 - every failure is shown to the operator with its reason
        return QkdLinkView(cfg.kme_url, Check.failed(exc), peer=peer)
    link = (status.status_extension or {}).get("qflare_link")
    view = QkdLinkView(cfg.kme_url, Check("verified", "the KME answered"), peer=peer,
                       stored_keys=status.stored_key_count, max_keys=status.max_key_count)
    if not isinstance(link, dict):
        return _replace(view, check=Check("absent", "the KME reports no link figures (no status_extension)"))

    def num(name: str) -> Any:
        v = link.get(name)
        return v if isinstance(v, int | float) and not isinstance(v, bool) else None

    qber, threshold = num("qber"), num("qber_abort")
    reason = link.get("last_abort_reason")
    view = _replace(view, frames=num("frames"), aborted_frames=num("aborted_frames"), qber=qber,
                    qber_abort=threshold, key_bits_per_pulse=num("key_bits_per_pulse"),
                    distilled_key_bits=num("distilled_key_bits"),
                    last_abort_reason=reason if isinstance(reason, str) else None)
    if qber is not None and threshold is not None and qber > threshold:
        return _replace(view, check=Check("failed", f"the last frame's QBER {qber:.2%} is above the abort threshold "
                                                    f"{threshold:.0%}: no key (an eavesdropper or a bad link)",
                                          "qber_above_threshold"))
    return _replace(view, check=Check("verified", "the KME answered; the last frame's QBER is below the threshold"))


def _replace(view: QkdLinkView, **changes: Any) -> QkdLinkView:
    import dataclasses

    return dataclasses.replace(view, **changes)
