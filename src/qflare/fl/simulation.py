"""In-process federated simulation: every client trained in turn in this process.

Used to tune the tasks' default hyperparameters and in tests. The path of an update is the one
the deployed system takes, minus networking and cryptography: ``get_arrays`` -> ``dump_arrays``
-> bytes -> ``load_arrays(spec)`` -> ``accumulator.add``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from qflare.errors import ConfigError
from qflare.fl.poisoning import Poisoner
from qflare.fl.privacy import PrivacyAccountant
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.fl.strategies import FedAvg, Strategy
from qflare.fl.tasks import Task, get_task
from qflare.fl.train import TrainConfig, get_arrays, set_arrays, train_local
from qflare.types import NDArrays

if TYPE_CHECKING:
    from qflare.fl.local_dp import LocalDP

__all__ = ["RoundMetrics", "client_seed", "run_inprocess"]


@dataclass(frozen=True)
class RoundMetrics:
    """What one simulated round produced.

    ``metrics`` is the task's evaluation of the new global model on the test set;
    ``train_loss`` the clients' mean training loss weighted by examples; times are wall-clock
    seconds (``client_seconds`` per client's local training). ``diverged`` counts the clients whose
    local training stopped on a non-finite loss, gradient or weight (:class:`~qflare.fl.train.TrainResult`);
    ``train_loss`` is then over the others (NaN if none had a finite loss). ``local_privacy``, with
    local DP (``train_config.dp``): ``{mode: local, epsilon: the largest device epsilon, epsilon_mean,
    epsilon_min, delta, devices: how many trained, noise_multipliers: [min, max]}``. ``he``, with CKKS:
    ``{bytes_up: every device's ciphertext upload, bytes_down: the encrypted sum one device downloads,
    plaintext_bytes_up, encrypt_seconds: every device's, sum_seconds: the server's, decrypt_seconds: one
    device's}``.
    """

    round: int
    metrics: dict[str, float]
    train_loss: float
    seconds: float
    client_seconds: list[float] = field(default_factory=list)
    update_bytes: int = 0
    privacy: dict[str, Any] | None = None
    diverged: int = 0
    local_privacy: dict[str, Any] | None = None
    he: dict[str, Any] | None = None
    flagged: list[int] = field(default_factory=list)
    quarantined: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON logs."""
        return asdict(self)


def client_seed(seed: int, round_index: int, client: int) -> int:
    """The local-training seed of ``client`` in ``round_index``: distinct per pair, reproducible."""
    return int(np.random.SeedSequence([seed, round_index, client]).generate_state(1)[0])


def run_inprocess(
    task: Task | str,
    clients: int,
    rounds: int,
    *,
    partition: str | None = None,
    alpha: float = 0.5,
    seed: int = 0,
    train_config: TrainConfig | None = None,
    strategy: Strategy | None = None,
    csv_path: str | Path | None = None,
    on_round: Callable[[RoundMetrics], None] | None = None,
    attack: Poisoner | None = None,
    malicious: Sequence[int] = (),
    accountant: PrivacyAccountant | None = None,
    he_context: Any = None,
    reputation: tuple[int, int] | None = None,
) -> list[RoundMetrics]:
    """Run ``rounds`` rounds with all ``clients`` taking part in each; return per-round metrics.

    Parameters
    ----------
    task:
        A task or its registry name.
    clients:
        Number of clients (partitions of the training data).
    rounds:
        Number of federated rounds.
    partition, alpha, seed, csv_path:
        Passed to ``task.client_dataset`` / ``task.test_dataset``; ``seed`` also initialises the
        global model and derives every client's training seed (:func:`client_seed`).
    train_config:
        Local training settings; default ``task.default_train_config()``.
    strategy:
        Aggregation rule; default :class:`~qflare.fl.strategies.FedAvg`.
    on_round:
        Called with each round's metrics as soon as they exist (progress output).
    attack, malicious:
        Model poisoning (:mod:`qflare.fl.poisoning`) by the clients with these indices. Colluding
        attacks (ALIE, IPM) are given the honest clients' updates of the same round (the omniscient
        attacker of their papers).
    train_config.dp:
        Local DP (:mod:`qflare.fl.local_dp`): every client trains with DP-SGD and its own accountant
        (noise and sampling seeded from ``seed``: reproducible, so private only against whoever does not
        know it); a client whose next round would exceed its budget sits the round out, and the run
        stops when no client can train.
    accountant:
        With central DP (``strategy`` a :mod:`qflare.fl.privacy` wrapper): the privacy spent per round
        (sampling rate 1, every client takes part) goes into :attr:`RoundMetrics.privacy`; a round that
        would exceed the accountant's budget is not run, so the model is the last one within budget.
    he_context:
        CKKS (:mod:`qflare.fl.he`): the operator's TenSEAL context *with* its secret key (the devices'). Each
        device uploads :func:`~qflare.fl.he.encrypt_update`; a :class:`~qflare.fl.he.HESumAccumulator`
        built from the public context alone sums them; the devices decrypt the sum (FedAvg) and train on
        it next round. Only FedAvg exists under CKKS: ``strategy``, ``attack`` and ``accountant`` are refused.
    reputation:
        ``(threshold, window)``: the server's quarantine (:mod:`qflare.server.reputation`, ``reputation:`` in
        ``global_config.yaml``, on by default with ``(3, 5)``) played in process. A client whose update the
        rule flags (:attr:`~qflare.fl.robust.RuleOutcome.flagged`) in ``threshold`` of the last ``window``
        rounds takes no further part, as a quarantined device is no longer selected. ``None`` (default):
        every client takes part in every round, whatever the rule says.
    """
    if clients < 1 or rounds < 1:
        raise ConfigError("need at least one client and one round", reason="invalid_config")
    if he_context is not None and (strategy is not None or attack is not None or accountant is not None):
        raise ConfigError("CKKS sums ciphertexts: no aggregation rule but FedAvg, no central DP, no poisoning",
                          reason="invalid_config")
    task = get_task(task) if isinstance(task, str) else task
    config = train_config or task.default_train_config()
    strategy = strategy or FedAvg()
    datasets = [
        task.client_dataset(k, clients, partition=partition, alpha=alpha, seed=seed, csv_path=csv_path)
        for k in range(clients)
    ]
    bad = frozenset(malicious) if attack is not None else frozenset()
    if attack is not None and attack.kind == "label-flip":
        for k in bad:
            *inputs, labels = datasets[k].tensors  # type: ignore[attr-defined]
            datasets[k] = TensorDataset(*inputs, torch.from_numpy(attack.poison_labels(labels.numpy())))
    test = task.test_dataset(seed=seed, csv_path=csv_path)
    global_model = task.build_model(seed)
    local_model = task.build_model(seed)
    spec = task.model_spec()
    local_dp = _local_dp(config, datasets, seed)
    history: list[RoundMetrics] = []
    strikes: dict[int, set[int]] = {}
    quarantined: set[int] = set()
    for r in range(1, rounds + 1):
        if accountant is not None and accountant.would_exceed(1.0):
            break  # stop cleanly: the global model is the one of the last round within budget
        taking_part = [k for k in range(clients) if k not in quarantined and (local_dp is None or not local_dp[
            k].would_exceed(num_examples=len(datasets[k]), batch_size=config.batch_size,  # type: ignore[arg-type]
                            epochs=config.epochs))]
        if not taking_part:
            break  # every device has spent its local budget
        start = time.perf_counter()
        global_arrays = get_arrays(global_model)
        accumulator = strategy.accumulator(spec, reference=global_arrays)
        losses, client_seconds, update_bytes, diverged = [], [], 0, 0
        trained: list[tuple[NDArrays, int]] = []
        for k in taking_part:
            dataset = datasets[k]
            tic = time.perf_counter()
            set_arrays(local_model, global_arrays)
            result = train_local(local_model, dataset, **config.as_kwargs(), seed=client_seed(seed, r, k),
                                 dp=local_dp[k] if local_dp is not None else None)
            client_seconds.append(time.perf_counter() - tic)
            trained.append((get_arrays(local_model), result.num_examples))
            diverged += int(result.diverged)
            if math.isfinite(result.mean_loss):
                losses.append((result.mean_loss, result.num_examples))
        he_report: dict[str, Any] | None = None
        if he_context is not None:
            he_report = _he_round(he_context, trained, spec, global_model)
            update_bytes = he_report["bytes_up"]
        plain = [] if he_context is not None else list(zip(taking_part, trained, strict=True))
        honest = [u for k, (u, _) in plain if k not in bad]
        for k, (update, num_examples) in plain:
            if k in bad:
                assert attack is not None
                rng = np.random.default_rng(client_seed(seed, r, k))
                update, num_examples = attack.poison_update(update, num_examples, reference=global_arrays, rng=rng,
                                                            honest=honest if attack.colluding else ())
            payload = dump_arrays(update)
            update_bytes += len(payload)
            arrays, _ = load_arrays(payload, spec)
            accumulator.add(arrays, num_examples)
        flagged: list[int] = []
        if he_context is None:
            set_arrays(global_model, accumulator.result())
            outcome = getattr(accumulator, "last_outcome", None)
            flagged = sorted(plain[i][0] for i in outcome.flagged) if outcome is not None else []
        if reputation is not None:
            threshold, window = reputation
            for k in flagged:
                strikes.setdefault(k, set()).add(r)
                if len({x for x in strikes[k] if x > r - window}) >= threshold:
                    quarantined.add(k)
        metrics = task.evaluate(global_model, test)
        spent = accountant.spend(1.0).as_dict() if accountant is not None else None
        total = sum(n for _, n in losses)
        round_metrics = RoundMetrics(
            round=r,
            metrics=metrics,
            train_loss=sum(loss * n for loss, n in losses) / total if total else float("nan"),
            seconds=time.perf_counter() - start,
            client_seconds=client_seconds,
            update_bytes=update_bytes,
            privacy=spent,
            diverged=diverged,
            local_privacy=_local_report([local_dp[k] for k in taking_part]) if local_dp is not None else None,
            he=he_report,
            flagged=flagged,
            quarantined=sorted(quarantined),
        )
        history.append(round_metrics)
        if on_round is not None:
            on_round(round_metrics)
    return history


def _he_round(ctx: Any, trained: Sequence[tuple[NDArrays, int]], spec: Any, global_model: torch.nn.Module
              ) -> dict[str, Any]:
    """One CKKS round: devices encrypt, the server sums under the public context, a device decrypts."""
    from qflare.fl.he import HESumAccumulator, decrypt_aggregate, encrypt_update, public_context

    server = HESumAccumulator(public_context(ctx), spec)
    encrypt = total = 0.0
    up = plain = 0
    for update, num_examples in trained:
        tic = time.perf_counter()
        blob = encrypt_update(ctx, update, num_examples, spec)
        encrypt += time.perf_counter() - tic
        up += len(blob)
        plain += len(dump_arrays(update))
        tic = time.perf_counter()
        server.add(blob, num_examples)
        total += time.perf_counter() - tic
    tic = time.perf_counter()
    summed = server.result()
    total += time.perf_counter() - tic
    tic = time.perf_counter()
    set_arrays(global_model, decrypt_aggregate(ctx, summed, spec))
    decrypt = time.perf_counter() - tic
    return {"bytes_up": up, "bytes_down": len(summed), "plaintext_bytes_up": plain, "encrypt_seconds": encrypt,
            "sum_seconds": total, "decrypt_seconds": decrypt}


def _local_dp(config: TrainConfig, datasets: Sequence[Any], seed: int) -> list[LocalDP] | None:
    if config.dp is None:
        return None
    from qflare.fl.local_dp import LocalDP

    return [LocalDP.from_config(config.dp, num_examples=len(d), batch_size=config.batch_size, epochs=config.epochs,
                                noise_seed=client_seed(seed, 0, k)) for k, d in enumerate(datasets)]


def _local_report(devices: Sequence[LocalDP]) -> dict[str, Any]:
    eps = [d.epsilon for d in devices]
    zs = [d.noise_multiplier for d in devices]
    return {"mode": "local", "epsilon": max(eps), "epsilon_mean": sum(eps) / len(eps), "epsilon_min": min(eps),
            "delta": devices[0].delta, "devices": len(devices), "noise_multipliers": [min(zs), max(zs)]}
