"""``qflare server --workers 2`` with the simulated enclave on PostgreSQL: the supervising process (uvicorn's
parent, which serves the one enclave) is SIGKILLed. Its workers and its enclave process must go with it, so
that the port and the round lease are free and a restart of the same server resumes the round (issue 13).

Linux only (``/proc``), like the rest of the ``--workers`` tests' PostgreSQL set-up.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qflare.fl.serialize import dump_arrays
from qflare.server.workers import SUPERVISOR_GONE_EXIT
from tests.server.pg import fresh_schema
from tests.server.test_supervisor_watch import reap, subreaper
from tests.server.test_workers import _free_port, _post, _start_workers, _stop_server, _write_workers_config
from tests.server.test_workers_enclave import _arrays, _check_round, _enroll, _open_round, _wait_aggregated

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

GONE_WITHIN = 30.0
"""Seconds the test allows the orphaned workers and enclave to exit (they take about 1 s; the machine is shared)."""


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema("qflare_wsup") as url:
        yield url


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of ``pid`` from ``/proc``; ``None`` once it is gone (a zombie counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rpartition(")")[2].split()[:2]
    return None if state in ("Z", "X") else (state, int(ppid))


def _children(pid: int) -> dict[int, str]:
    """The live children of ``pid`` and their command lines."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[1] == pid:
            try:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                pass
    return found


def _port_is_free(port: int) -> bool:
    """Whether a server could listen on ``127.0.0.1:port`` now (bound as uvicorn binds: SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
        return True


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_workers_and_enclave_exit_when_the_supervisor_is_killed_and_a_restart_resumes_the_round(
        tmp_path: Path, pg_url: str) -> None:
    # Prepare: three devices in round 1; dev_000's update accepted (200) before anything is killed
    n = 3
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    _write_workers_config(tmp_path, pg_url, n, enclave=True, port=port)
    first_log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    second_log = open(tmp_path / "server-restarted.log", "wb")  # noqa: SIM115
    subreaper(True)  # the supervisor's orphans become this process's children (not init's)
    first = _start_workers(tmp_path, port, first_log)
    second = None
    spawned: list[int] = []
    try:
        keys, server_pub = _enroll(url, n)
        rid = _open_round(url, keys, server_pub)

        def update(i: int) -> httpx.Response:
            d = f"dev_{i:03d}"
            blob = dump_arrays(_arrays(i), {"num_examples": str(i + 1), "train_loss": "0.5"})
            return _post(url, keys[d], server_pub, d, f"/v1/device/rounds/{rid}/update", blob, round_id=rid)

        assert (r := update(0)).status_code == 200, r.text
        deadline = time.monotonic() + 120
        while True:  # the supervising process's children: both workers, the enclave (and multiprocessing's
            children = _children(first.pid)  # resource tracker)
            workers = [p for p, cmd in children.items() if "spawn_main" in cmd]
            enclaves = [p for p, cmd in children.items() if "qflare.enclave.trusted" in cmd]
            # /healthz answered by one worker; the other may still be importing (before its watch starts,
            # on a loaded machine for tens of seconds): wait until both have started
            started = (tmp_path / "server.log").read_text(errors="replace").count("Application startup complete")
            if len(workers) == 2 and len(enclaves) == 1 and started >= 2:
                break
            assert time.monotonic() < deadline, (children, started)
            time.sleep(0.2)
        spawned = list(children)

        # Execute: SIGKILL the supervising process only
        first.kill()
        first.wait()
        killed_at = time.monotonic()
        exited: dict[int, int] = {}
        while len(exited) < len(spawned) and time.monotonic() - killed_at < GONE_WITHIN:
            reap(spawned, exited)
            time.sleep(0.05)
        gone_after = time.monotonic() - killed_at
        if left := [p for p in spawned if p not in exited]:
            # what an orphaned worker does meanwhile: a device's upload gets 503 (the enclave is gone)
            try:
                answer = str(update(1).status_code)
            except httpx.HTTPError as exc:
                answer = type(exc).__name__
            for p in left:  # each worker's faulthandler writes its threads' stacks to the log
                os.kill(p, signal.SIGABRT)
            time.sleep(2)
            pytest.fail(f"{GONE_WITHIN:.0f} s after the supervisor's SIGKILL, still running: "
                        f"{ {p: children[p] for p in left} }; an upload to the port got {answer}; the log ends: "
                        + (tmp_path / "server.log").read_text(errors="replace")[-6000:])

        # Assert: every worker and the enclave exited within seconds, each worker non-zero (terminated by its
        # graceful stop's SIGTERM, or forced) with one line saying why; the port is free
        kinds = {p: "worker" if p in workers else "enclave" if p in enclaves else "resource tracker" for p in spawned}
        print(f"workers and enclave gone {gone_after:.2f} s after the supervisor's SIGKILL; exit codes "
              f"{ {f'{kinds[p]} {p}': c for p, c in exited.items()} }")
        # (1: the backstop ended a worker stuck past its grace; its log holds each thread's stack)
        assert all(exited[p] in (-signal.SIGTERM, SUPERVISOR_GONE_EXIT, 1) for p in workers), exited
        text = (tmp_path / "server.log").read_text()
        said = re.findall(r"the supervising process \(pid (\d+)\) is gone", text)
        assert said == [str(first.pid)] * 2, text[-3000:]
        assert _port_is_free(port)

        # Execute: restart the same server (same database, keys and enclave work dir, same port)
        restarted_at = time.monotonic()
        second = _start_workers(tmp_path, port, second_log)
        print(f"the restarted server answered /healthz after {time.monotonic() - restarted_at:.2f} s")
        again = update(0)  # a fresh envelope of the accepted update: already counted
        codes = [update(1).status_code, update(2).status_code]

        # Assert: the round resumes and aggregates each of the three updates exactly once
        assert again.status_code == 409 and "duplicate_update" in again.text, again.text
        assert codes == [200, 200]
        _wait_aggregated(url, tmp_path)
        _check_round(url, pg_url, rid, {i: i + 1 for i in range(n)}, list(keys))
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                _stop_server(proc)
        _kill_all(spawned)  # before the fix: orphans of the first server
        subreaper(False)
        first_log.close()
        second_log.close()
