"""``qflare witness``: an independent C2SP tlog-witness for QFLARE's audit ledger.

- :mod:`qflare.witness.core` - :class:`Witness`: its key, its persisted state (the last checkpoint it
  cosigned, swapped atomically), and ``add-checkpoint`` over :func:`qflare.ledger.witness.add_checkpoint`.
- :mod:`qflare.witness.service` - the HTTP service (``POST /add-checkpoint``, ``GET /witness/key``).
- :mod:`qflare.witness.poller` - polls a log (``/ledger/checkpoint`` + consistency proofs), cosigns, and
  pushes the cosignature back (``POST /ledger/cosignature``).

Not part of the pure :mod:`qflare.ledger` package (this one speaks HTTP), nor of :mod:`qflare.server`
(a witness is independent of the log it watches). Design: ``docs/ledger.md``, "Witnesses".
"""

from qflare.witness.core import Witness, generate_witness_key, load_witness_key

__all__ = ["Witness", "generate_witness_key", "load_witness_key"]
