"""The run artefacts of a server run by hand: what ``qflare simulate`` writes under ``runs/<timestamp>/``.

``qflare server`` writes ``metrics.csv`` (one row per round), ``<metric>.png`` (the metric per round, with
its unit), ``summary.json`` and ``global_config.yaml`` into a new ``--runs-dir/<timestamp>/`` when the run
finishes (every round of ``rounds.total`` done), and again when the server stops, so a run stopped early
(Ctrl-C) leaves them too. Nothing is written before the first round opened. The figures come from the
database, so they are the same whichever process (or worker) accepted the updates.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qflare.config import GlobalConfig, dump_yaml
from qflare.server.storage import Repository

__all__ = ["RunRecorder", "write_run_artefacts"]

log = logging.getLogger("qflare.server")


def _rounds(repo: Repository) -> list[dict[str, Any]]:
    return [{"round_id": r.round_id, "status": r.status, "close_reason": r.close_reason, "new_version": r.new_version,
             "metrics": r.metrics} for r in repo.list_rounds()]


def write_run_artefacts(config: GlobalConfig, repo: Repository, run_dir: Path) -> dict[str, Any]:
    """Write the artefacts of the run stored in ``repo`` into ``run_dir`` (created); return the summary."""
    from qflare.fl.tasks import get_task
    from qflare.sim.report import metric_label, write_metrics_csv, write_plot, write_summary

    metric = get_task(config.task).metric
    rounds = _rounds(repo)
    devices = repo.list_devices()
    done = [r for r in rounds if r["status"] == "aggregated"]
    final = (done[-1]["metrics"] or {}) if done else {}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(rounds, run_dir / "metrics.csv")
    write_plot(rounds, metric, run_dir / f"{metric}.png",
               title=f"QFLARE {config.task}: {len(devices)} devices (qflare server)",
               ylabel=metric_label(metric, config.task, user_data=config.evaluation.csv_path is not None))
    dump_yaml(config, run_dir / "global_config.yaml")
    summary: dict[str, Any] = {
        "task": config.task,
        "source": "qflare server",
        "devices": len(devices),
        "rounds": config.rounds.total,
        "rounds_completed": len(done),
        "rounds_failed": sum(r["status"] == "failed" for r in rounds),
        "finished": len(done) >= config.rounds.total,
        f"final_{metric}": final.get(metric),
        "final_loss": final.get("loss"),
        "accepted_updates": repo.count_updates(),
        "rejected_updates": repo.count_events("update_rejected"),
        "rejected_requests": repo.count_events("request_rejected"),
        "key_sources": sorted({d.key_source for d in devices}),
        "enclave": config.enclave.backend,
        "run_dir": str(run_dir),
    }
    if f"baseline_{metric}" in final:
        summary[f"baseline_{metric}"] = final[f"baseline_{metric}"]
    write_summary(summary, run_dir / "summary.json")
    return summary


class RunRecorder:
    """Writes a server's run artefacts once its run finishes (a background check every ``interval`` s) and at
    :meth:`close`; every write goes to the same run directory, made at the first one.

    Parameters
    ----------
    config, repo:
        The server's configuration and database.
    runs_dir:
        Where the run directory is made (``runs``, as ``qflare simulate``).
    finished:
        Whether the run is over (the orchestrator's :meth:`finished`).
    on_written:
        Told the run directory after each write (the console line).
    """

    def __init__(self, config: GlobalConfig, repo: Repository, runs_dir: Path, *, finished: Callable[[], bool],
                 on_written: Callable[[Path], None] = lambda _: None, interval: float = 2.0) -> None:
        self.config, self.repo, self.runs_dir = config, repo, runs_dir
        self._finished, self._on_written, self._interval = finished, on_written, interval
        self.run_dir: Path | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="qflare-run-artefacts", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self._finished():
                    self.write()
                    return
            except Exception:  # noqa: BLE001 - artefacts must never stop the server; retried at close
                log.exception("writing the run artefacts failed")

    def write(self) -> Path | None:
        """Write the artefacts now (``None``: no round was opened yet, nothing to write)."""
        with self._lock:
            if not self.repo.list_rounds():
                return None
            if self.run_dir is None:
                from qflare.sim.runner import new_run_dir

                self.run_dir = new_run_dir(self.runs_dir)
            write_run_artefacts(self.config, self.repo, self.run_dir)
        self._on_written(self.run_dir)
        return self.run_dir

    def close(self) -> Path | None:
        """Stop watching and write the artefacts as they are at the end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.write()
