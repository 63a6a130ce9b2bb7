"""Global model versions."""

from __future__ import annotations

from sqlalchemy import select

from qflare.errors import NotFound
from qflare.server.storage.engine import StoreBase
from qflare.server.storage.records import (
    ModelRecord,
    _model,
)
from qflare.server.storage.tables import ModelVersion


class ModelStore(StoreBase):
    """Global model versions."""

    def add_model(
        self, version: int, *, blob: bytes, sha256: str, spec_fingerprint: str, round_id: int | None, now: float
    ) -> ModelRecord:
        with self._tx() as s:
            row = ModelVersion(
                version=version,
                sha256=sha256,
                spec_fingerprint=spec_fingerprint,
                blob=blob,
                round_id=round_id,
                created_at=now,
            )
            s.add(row)
            s.flush()
            return _model(row)

    def latest_model(self) -> ModelRecord | None:
        with self._tx() as s:
            row = s.scalars(select(ModelVersion).order_by(ModelVersion.version.desc()).limit(1)).first()
            return _model(row) if row is not None else None

    def get_model(self, version: int) -> ModelRecord | None:
        with self._tx() as s:
            row = s.get(ModelVersion, version)
            return _model(row) if row is not None else None

    def model_blob(self, version: int) -> bytes:
        with self._tx() as s:
            blob = s.scalar(select(ModelVersion.blob).where(ModelVersion.version == version))
            if blob is None:
                raise NotFound(f"model version {version} does not exist", reason="unknown_model_version")
            return bytes(blob)

    def list_models(self) -> list[ModelRecord]:
        with self._tx() as s:
            return [_model(r) for r in s.scalars(select(ModelVersion).order_by(ModelVersion.version))]
