"""Aborted QKD frames in the audit ledger: the server watches its KME's link figures and logs each abort.

The quantum link runs between the KMEs, not in the server; what the server can know is what its KME
reports in the ETSI status's ``status_extension`` (``qflare_link``: frames, aborted frames, the last
frame's QBER and abort reason; :func:`qflare.server.checks.qkd_link`). :class:`QkdLinkWatch` polls it
(every :data:`WATCH_SECONDS`, from the server's lifespan, off the round ticker so a slow KME cannot delay
deadlines) and appends one ``qkd_link_aborted`` entry (reason = the KME's last abort reason, ``qber`` =
that frame's estimated QBER) whenever the aborted-frame count grew since the last poll. The first poll
of a server's life only takes the count as its baseline (aborts before the server watched are the KME's
history, not logged again after a restart).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qflare.server.state import ServerState

__all__ = ["WATCH_SECONDS", "QkdLinkWatch"]

log = logging.getLogger("qflare.qkd")

WATCH_SECONDS = 10.0


class QkdLinkWatch:
    """Logs newly aborted QKD frames of the server's KME link (one entry per poll that saw new aborts)."""

    def __init__(self) -> None:
        self._aborted: dict[str, int] = {}  # KME URL -> aborted frames last seen

    def poll(self, state: ServerState) -> int:
        """Look at the link once; return how many newly aborted frames were logged (0 without QKD/ledger)."""
        from qflare.server.checks import qkd_link

        if state.ledger is None or state.config.qkd is None:
            return 0
        view = qkd_link(state)
        if view is None or view.peer is None or view.aborted_frames is None:
            return 0  # no QKD device yet, the KME is away, or it reports no link figures
        before = self._aborted.get(view.kme_url)
        self._aborted[view.kme_url] = view.aborted_frames
        if before is None or view.aborted_frames <= before:
            return 0
        new = view.aborted_frames - before
        reason = view.last_abort_reason or "frame_aborted"
        state.ledger.qkd_link_aborted(f"{view.peer}->server", reason, view.qber)
        log.warning("QKD link %s->server: %d frame(s) aborted since the last look (%s, QBER %s)", view.peer, new,
                    reason, "unknown" if view.qber is None else f"{view.qber:.2%}")
        return new
