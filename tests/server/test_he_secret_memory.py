"""The server process never holds the CKKS secret key: a real ``qflare server`` runs CKKS rounds over HTTP with
real edge processes, then its memory is read (``/proc/<pid>/mem``) for the secret key's bytes.

As ``tests/enclave/test_isolation.py`` scans for the enclave's key seeds: the needles are windows of the secret
key as SEAL keeps it in memory (its NTT-form coefficients, uint64) and of the key's own serialization. The
same scan of a process that loaded the devices' file finds them (the search works on this form).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qflare.config import DataConfig, TrainConfig
from qflare.fl.he import load_secret_context, make_context, write_context_files
from qflare.sim.net import free_port
from qflare.sim.runner import SimulationConfig, build_global_config, he_files, start_server
from tests.enclave.test_isolation import find_in_memory

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/mem")]

WINDOWS = 16  # needles from the key's coefficients, evenly spaced
WINDOW_BYTES = 32


def secret_needles(secret_file: Path) -> list[bytes]:
    ctx = load_secret_context(secret_file)
    key = ctx.secret_key().data.data()
    coeffs = np.array([key.data(i) for i in range(key.coeff_count())], dtype=np.uint64).tobytes()
    step = len(coeffs) // WINDOWS
    needles = [coeffs[i * step: i * step + WINDOW_BYTES] for i in range(WINDOWS)]
    # and the secret key alone as SEAL serializes it (the file's other parts are the public keys, which the
    # server holds by design: a window of the whole file can match those)
    saved = secret_file.with_name("secret-key-only.seal")
    ctx.secret_key().data.save(str(saved))
    raw = saved.read_bytes()
    saved.unlink()
    needles += [raw[k * len(raw) // 3: k * len(raw) // 3 + WINDOW_BYTES] for k in (1, 2)]
    return needles


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_the_server_process_never_holds_the_ckks_secret_key(tmp_path: Path) -> None:
    # Prepare: the operator's contexts, a CKKS server (2 devices, 2 rounds of one short epoch)
    run_dir = tmp_path / "run"
    secret, _ = he_files(run_dir)
    write_context_files(make_context(), *he_files(run_dir))
    sim = SimulationConfig(clients=2, rounds=2, enclave="none", aggregator="fedavg", he="ckks", ledger=False,
                           train=TrainConfig(epochs=1, batch_size=32, lr=0.05))
    config = build_global_config(sim, run_dir, free_port())
    needles = secret_needles(secret)
    with start_server(config, run_dir) as fed:
        # Execute: real edge processes encrypt, the server sums, the devices decrypt and train on the sum
        for i, device_id in enumerate(("edge_01", "edge_02")):
            fed.enroll(device_id)
            data = DataConfig(task="digits", num_partitions=2, partition_index=i, seed=0)
            fed.start_edge(fed.device_config(device_id, data, he_context_file=str(secret.resolve()), cost_log=True,
                                             long_poll_seconds=2.0))
        deadline = time.monotonic() + 300
        while not fed.status()["finished"]:
            assert time.monotonic() < deadline, "the run did not finish"
            assert fed.server.poll() is None, "the server exited"
            time.sleep(0.5)
        status = fed.status()
        assert status["rounds_completed"] == 2 and status["accepted_updates"] == 4
        assert status["rejected_updates"] == 0
        # Assert: no byte window of the secret key anywhere in the server's (or its children's) memory
        pids = process_tree(fed.server.pid)
        try:
            hits = {pid: set(find_in_memory(needles, pid=pid)) for pid in pids}
        except PermissionError:
            pytest.skip("this user may not read the server process's memory (ptrace policy)")
        assert all(not h for h in hits.values()), hits
        # nor in anything the server wrote: its database (updates, models, ledger), its keys, its config
        written = [run_dir / "qflare.db", run_dir / "global_config.yaml", *(run_dir / "server-keys").rglob("*")]
        for f in (f for f in written if f.is_file()):
            data = f.read_bytes()
            assert not [i for i, n in enumerate(needles) if n in data], f
        # the devices did decrypt (their logs show a trained round on the encrypted aggregate)
        logs = "".join(p.read_text() for p in (run_dir / "logs").glob("edge_*.log"))
        assert '"encrypted_model": true' in logs

    # Assert: the same scan finds the key in a process that loaded the devices' file (it works on this form)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from qflare.fl.he import load_secret_context; ctx = load_secret_context(Path(sys.argv[1])); "
         "print('ready', flush=True); time.sleep(60)", str(secret)],
        stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"
        assert set(range(WINDOWS)) <= set(find_in_memory(needles, pid=holder.pid))
    finally:
        holder.kill()
        holder.wait()
