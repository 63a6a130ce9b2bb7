"""The enclave's configuration: every setting that changes what the enclave enforces.

The configuration is part of the measurement (like a Gramine manifest is part of MRENCLAVE): an edge
node that pins a measurement pins these values too, so the untrusted host cannot, say, lift the
update-norm bound without changing the measurement the devices see in the quote.

File format (``enclaves/enclave_config.json``): one JSON object with ``"format":
"qflare-enclave-config/1"`` and the fields of :class:`EnclaveConfig`; unknown keys are refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from qflare.crypto.signing import VerifyKey
from qflare.errors import ConfigError, QFlareError
from qflare.fl.privacy import dp_from_params, dp_params
from qflare.fl.strategies import STRATEGIES, get_strategy

__all__ = ["CONFIG_FORMAT", "DEFAULT_LEDGER_ORIGIN", "DEFAULT_UPDATE_PATH_REGEX", "EnclaveConfig", "load_config"]

CONFIG_FORMAT: Final = "qflare-enclave-config/1"
DEFAULT_UPDATE_PATH_REGEX: Final = r"^/v1/device/rounds/(?P<round_id>[0-9]{1,19})/update$"
_KEY_SOURCES: Final = frozenset({"mlkem", "qkd", "hybrid"})
_MAX_CONFIG_FILE: Final = 65536
DEFAULT_LEDGER_ORIGIN: Final = "qflare.local/ledger"  # qflare.server.ledger.DEFAULT_ORIGIN


@dataclass(frozen=True)
class EnclaveConfig:
    """What the enclave enforces; measured.

    Parameters
    ----------
    isv_prod_id:
        Product id (SGX ``ISVPRODID``), 0-65535.
    isv_svn:
        Security version (SGX ``ISVSVN``), 0-65535: raise it when a release fixes a vulnerability,
        and make verifiers require the new value (``min_svn``).
    debug:
        A debug enclave: it answers the ``Unsafe*`` debug call and its quotes say ``debug``; verifiers
        refuse debug quotes unless told otherwise (SGX ``ATTRIBUTES.DEBUG``).
    max_update_norm:
        Reject an update whose change to the global model has a larger L2 norm; ``None`` disables it.
    checkpoint_every:
        Seal a checkpoint of a round's running aggregate after this many accumulated updates.
    max_payload_bytes:
        Largest envelope, update, or model that crosses the boundary.
    max_request_payload_bytes:
        Largest request payload :meth:`open_request` hands back to the host (small requests only).
    max_pending_updates:
        Validated updates waiting for ``accumulate`` kept inside (oldest dropped first; the host then
        replays the sealed copy).
    max_open_requests:
        Response keys kept for requests whose response is not yet sealed (oldest dropped first).
    update_path_regex:
        Envelope paths that carry updates: :meth:`open_request` refuses them, so an update's payload
        never leaves; ``validate_update`` requires them. Group ``round_id`` must equal the round.
    allowed_key_sources:
        Envelope key sources the enclave accepts. ``qkd`` alone is off by default: its key reaches the
        enclave through the host, so the host could read such a request.
    aggregation_rule:
        The aggregation strategy (``qflare.fl.strategies``) every round runs inside; measured, so the
        host cannot swap the rule devices were promised.
    aggregation_params:
        The rule's parameters (``aggregation.params``: a JSON object of numbers, strings or nulls,
        validated by the strategy); measured with the rule.
    operator_key:
        Hex of the operator's composite (ML-DSA-65 + Ed25519) public key. When set, the enclave keeps
        its own device registry (statements signed by this key, :mod:`qflare.enclave.registry`) and
        refuses update envelopes whose device signature does not verify against it; plaintext updates
        are then refused (they carry no device signature). ``None``: the enclave trusts the host's
        device check (measured, so devices pinning the measurement know which).
    privacy:
        Central DP (:func:`qflare.fl.privacy.dp_params` form: ``mode: central``, the resolved
        ``noise_multiplier``, ``clip``, ``adaptive`` and the adaptive rule's parameters): the enclave wraps
        the rule in the DP wrapper, so updates are clipped and the noise is drawn inside. Empty: no DP (and
        the key is left out of :meth:`to_dict`, so such measurements are unchanged). The accountant runs on
        the host: it needs only the public noise multiplier, sampling rate and round count.
    ledger_origin:
        The transparency log's origin line (``docs/ledger.md``): the only origin whose checkpoint bodies
        the ``sign_note`` call signs, and the name of the enclave's note signature lines. Left out of
        :meth:`to_dict` at its default, so such measurements are unchanged.
    """

    isv_prod_id: int = 1
    isv_svn: int = 1
    debug: bool = False
    max_update_norm: float | None = None
    checkpoint_every: int = 16
    max_payload_bytes: int = 64 * 1024 * 1024
    max_request_payload_bytes: int = 64 * 1024
    max_pending_updates: int = 16
    max_open_requests: int = 1024
    update_path_regex: str = DEFAULT_UPDATE_PATH_REGEX
    allowed_key_sources: tuple[str, ...] = ("hybrid", "mlkem")
    aggregation_rule: str = "fedavg"
    aggregation_params: dict[str, Any] = field(default_factory=dict)
    operator_key: str | None = None
    privacy: dict[str, Any] = field(default_factory=dict)
    ledger_origin: str = DEFAULT_LEDGER_ORIGIN

    __hash__ = None  # type: ignore[assignment]  # aggregation_params is a dict

    def __post_init__(self) -> None:
        for name in ("isv_prod_id", "isv_svn"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= 0xFFFF:
                raise ConfigError(f"enclave config {name} must be an integer 0..65535", reason="invalid_config")
        if not isinstance(self.debug, bool):
            raise ConfigError("enclave config debug must be true or false", reason="invalid_config")
        norm = self.max_update_norm
        if norm is not None and (
            isinstance(norm, bool) or not isinstance(norm, int | float) or not math.isfinite(norm) or norm <= 0
        ):
            raise ConfigError(
                "enclave config max_update_norm must be a positive number or null", reason="invalid_config"
            )
        for name, low in (
            ("checkpoint_every", 1),
            ("max_payload_bytes", 1024),
            ("max_request_payload_bytes", 1),
            ("max_pending_updates", 1),
            ("max_open_requests", 1),
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ConfigError(f"enclave config {name} must be an integer >= {low}", reason="invalid_config")
        try:
            pattern = re.compile(self.update_path_regex)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"enclave config update_path_regex: {exc}", reason="invalid_config") from None
        if "round_id" not in pattern.groupindex:
            raise ConfigError(
                "enclave config update_path_regex needs a (?P<round_id>...) group", reason="invalid_config"
            )
        sources = self.allowed_key_sources
        if not isinstance(sources, tuple) or not sources or not set(sources) <= _KEY_SOURCES:
            raise ConfigError(
                f"enclave config allowed_key_sources must be a non-empty subset of {sorted(_KEY_SOURCES)}",
                reason="invalid_config",
            )
        object.__setattr__(self, "allowed_key_sources", tuple(sorted(set(sources))))  # one canonical form
        if not isinstance(self.aggregation_rule, str) or self.aggregation_rule not in STRATEGIES:
            raise ConfigError(
                f"enclave config aggregation_rule must be one of {sorted(STRATEGIES)}", reason="invalid_config"
            )
        params = self.aggregation_params
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str) or (isinstance(v, int | float)
                                                                         and not isinstance(v, bool)
                                                                         and math.isfinite(v)))
            for k, v in params.items()
        ):
            raise ConfigError(  # strings: names such as FLTrust's root_task or a server optimizer's base rule
                "enclave config aggregation_params must be an object of finite numbers, strings or nulls",
                reason="invalid_config",
            )
        try:
            STRATEGIES[self.aggregation_rule].check_params(params)
        except ConfigError as exc:
            raise ConfigError(f"enclave config aggregation_params: {exc.message}", reason="invalid_config") from None
        object.__setattr__(self, "aggregation_params", dict(sorted(params.items())))
        if self.operator_key is not None:
            self.operator_verify_key()  # raises ConfigError on anything but a composite public key
        if not isinstance(self.privacy, dict):
            raise ConfigError("enclave config privacy must be an object", reason="invalid_config")
        if self.privacy:
            try:  # one canonical form: the resolved parameters of the wrapper they build
                canonical = dp_params(dp_from_params(get_strategy(self.aggregation_rule, **params), self.privacy))
            except ConfigError as exc:
                raise ConfigError(f"enclave config privacy: {exc.message}", reason="invalid_config") from None
            object.__setattr__(self, "privacy", dict(sorted(canonical.items())))
        origin = self.ledger_origin
        if not isinstance(origin, str) or not origin or any(c.isspace() for c in origin) or "+" in origin:
            raise ConfigError(  # a signed-note key name: no whitespace, no "+"
                "enclave config ledger_origin must be a non-empty name without whitespace or '+'",
                reason="invalid_config",
            )

    def operator_verify_key(self) -> VerifyKey | None:
        """The pinned operator key, or ``None`` when device checks are left to the host."""
        if self.operator_key is None:
            return None
        bad = ConfigError("enclave config operator_key must be a composite public key in hex", reason="invalid_config")
        if not isinstance(self.operator_key, str) or not re.fullmatch(r"[0-9a-f]+", self.operator_key):
            raise bad
        try:
            return VerifyKey.from_bytes(bytes.fromhex(self.operator_key))
        except (QFlareError, ValueError):
            raise bad from None

    def to_dict(self) -> dict[str, Any]:
        """The fields plus ``format``, JSON-ready."""
        doc: dict[str, Any] = {"format": CONFIG_FORMAT, **asdict(self)}
        doc["allowed_key_sources"] = list(self.allowed_key_sources)
        if not self.privacy:
            del doc["privacy"]
        if self.ledger_origin == DEFAULT_LEDGER_ORIGIN:
            del doc["ledger_origin"]
        return doc

    def canonical_json(self) -> bytes:
        """Sorted keys, no whitespace, ASCII: the bytes that enter the measurement."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def update_path_round(self, path: str) -> int | None:
        """The round id an update path names, or ``None`` when ``path`` is not an update path.

        ``path`` is a signed request target (``docs/protocol.md``): the query is ignored and the path
        percent-decoded first, so no spelling of an upload's target (``.../5/update?x=1``,
        ``.../%35/update``) passes for a small request whose payload may leave the enclave.
        """
        decoded = unquote(path.split("?", 1)[0])
        match = re.fullmatch(self.update_path_regex, decoded)
        return int(match.group("round_id")) if match else None

    @classmethod
    def from_dict(cls, doc: Any) -> EnclaveConfig:
        """Parse :meth:`to_dict` output; unknown or missing-format documents raise ``ConfigError``."""
        if not isinstance(doc, dict) or doc.get("format") != CONFIG_FORMAT:
            raise ConfigError(
                f"enclave config must be an object with format {CONFIG_FORMAT!r}", reason="invalid_config"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known - {"format"})
        if unknown:
            raise ConfigError(f"enclave config has unknown keys: {unknown}", reason="invalid_config")
        values = {k: v for k, v in doc.items() if k != "format"}
        if "allowed_key_sources" in values:
            raw = values["allowed_key_sources"]
            if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
                raise ConfigError(
                    "enclave config allowed_key_sources must be a list of strings", reason="invalid_config"
                )
            values["allowed_key_sources"] = tuple(raw)
        return cls(**values)

    @classmethod
    def from_json(cls, data: bytes | str) -> EnclaveConfig:
        """Parse a config file's bytes."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"enclave config is not valid JSON: {exc}", reason="invalid_config") from None
        return cls.from_dict(doc)

    def write(self, path: str | Path) -> Path:
        """Write the config as pretty JSON (the measured form is :meth:`canonical_json`, not the file bytes)."""
        target = Path(path)
        target.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="ascii")
        return target


def load_config(path: str | Path) -> EnclaveConfig:
    """Read and validate an enclave config file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read enclave config {p}: {exc.strerror}", reason="invalid_config") from None
    if len(data) > _MAX_CONFIG_FILE:
        raise ConfigError(f"enclave config {p} is too large", reason="invalid_config")
    return EnclaveConfig.from_json(data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
