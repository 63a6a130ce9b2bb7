"""ETSI GS QKD 014 V1.1.1 wire format (section 6): the JSON bodies both KME and SAE speak.

Pure data models (pydantic), shared by :mod:`qflare.qkd.client` (the SAE side) and the KME service
in :mod:`qflare.kme`. Field names are exactly those of the standard. Extensions are accepted and
ignored unless mandatory (``extra="allow"``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "API_PREFIX",
    "ErrorBody",
    "KMEStatus",
    "KeyContainer",
    "KeyIDItem",
    "KeyIDs",
    "KeyItem",
    "KeyRequest",
]

API_PREFIX = "/api/v1/keys"
"""Every ETSI 014 route lives under this path: ``{API_PREFIX}/{SAE_ID}/status|enc_keys|dec_keys``."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class KMEStatus(_Wire):
    """Status data format (ETSI GS QKD 014, 6.1)."""

    source_KME_ID: str
    target_KME_ID: str
    master_SAE_ID: str
    slave_SAE_ID: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int
    status_extension: dict[str, Any] | None = None
    """Optional (6.1, "for future use"); QFLARE's KME puts ``{"qflare_link": {frames, aborted_frames, qber,
    qber_abort, key_bits_per_pulse, distilled_key_bits, pulses, last_abort_reason}}`` here."""


class KeyRequest(_Wire):
    """Key request data format (6.2); every field is optional, so ``{}`` (or no body) means the defaults."""

    number: int = 1
    size: int | None = None
    additional_slave_SAE_IDs: list[str] = Field(default_factory=list)
    extension_mandatory: list[dict[str, Any]] = Field(default_factory=list)
    extension_optional: list[dict[str, Any]] = Field(default_factory=list)


class KeyIDItem(_Wire):
    """One entry of ``key_IDs`` (6.4)."""

    key_ID: str


class KeyIDs(_Wire):
    """Key IDs data format (6.4); ``key_IDs`` is mandatory."""

    key_IDs: list[KeyIDItem]


class KeyItem(_Wire):
    """One key of a key container: ``key_ID`` (UUID) and ``key`` (base64)."""

    key_ID: str
    key: str


class KeyContainer(_Wire):
    """Key container data format (6.3)."""

    keys: list[KeyItem]


class ErrorBody(BaseModel):
    """Error data format (6.5): ``message`` and optional ``details``."""

    model_config = ConfigDict(extra="allow")
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)
