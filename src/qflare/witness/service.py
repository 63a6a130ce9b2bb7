"""The witness's HTTP service: C2SP tlog-witness ``POST /add-checkpoint`` and ``GET /witness/key``."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from qflare.errors import Conflict, InvalidInput, LedgerIntegrityError, MalformedPayload
from qflare.ledger.witness import WitnessConflict
from qflare.witness.core import Witness

__all__ = ["create_witness_app"]

_MAX_BODY = 64 * 1024
_TEXT = "text/plain; charset=utf-8"
# tlog-witness status codes by reason (qflare.ledger.witness documents them).
_STATUS = {
    "origin_mismatch": 404,
    "invalid_signature": 403,
    "no_verifiable_signatures": 403,
    "missing_signature_half": 403,
    "checkpoint_fork": 409,
    "inconsistent_checkpoint": 422,
}


def create_witness_app(witness: Witness) -> FastAPI:
    """The FastAPI app serving ``witness``."""
    app = FastAPI(title="QFLARE witness", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        body = await request.body()
        if len(body) > _MAX_BODY:
            return Response("body too large\n", status_code=413, media_type=_TEXT)
        try:
            out = witness.add_checkpoint(body)
        except WitnessConflict as exc:
            return Response(f"{exc.latest_size}\n", status_code=409, media_type="text/x.tlog.size")
        except (InvalidInput, MalformedPayload) as exc:
            return Response(f"{exc.reason}: {exc.message}\n", status_code=400, media_type=_TEXT)
        except (LedgerIntegrityError, Conflict) as exc:
            return Response(f"{exc.reason}: {exc.message}\n", status_code=_STATUS.get(exc.reason, 403),
                            media_type=_TEXT)
        return Response(out, media_type=_TEXT)

    @app.get("/witness/key")
    def key() -> Response:
        """The witness's cosignature verifier key (what devices list in ``ledger.witness_keys``)."""
        return Response(witness.verifier.verifier_key() + "\n", media_type=_TEXT)

    @app.get("/witness/state")
    def state() -> dict[str, object]:
        s = witness.state
        return {"origin": witness.origin, "size": witness.size,
                "root": None if s is None else s.checkpoint.root.hex()}

    return app
