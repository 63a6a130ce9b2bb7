"""``qflare simulate``: a real server and N edge nodes on this machine, with live progress."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qflare.cli.console import make_console
from qflare.config import TrainConfig
from qflare.errors import ConfigError

if TYPE_CHECKING:
    from qflare.sim.runner import SimulationConfig

console = make_console(stderr=True)


def simulate(
    clients: Annotated[int, typer.Option(min=1, max=5000, help="number of edge nodes")] = 10,
    rounds: Annotated[int, typer.Option(min=1, help="training rounds")] = 20,
    task: Annotated[str, typer.Option(help="digits | digits-wide | traffic | pollution")] = "digits",
    partition: Annotated[
        str | None, typer.Option(help="dirichlet | iid | sensor (default: dirichlet for digits, sensor otherwise)")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (label skew)")] = 0.5,
    seed: Annotated[int, typer.Option()] = 0,
    fraction: Annotated[float, typer.Option(help="fraction of active devices selected per round")] = 1.0,
    deadline: Annotated[float | None, typer.Option(help="round deadline in seconds (default: 120, 0.6 a device "
                                                   "above 200 devices)")] = None,
    epochs: Annotated[int | None, typer.Option(help="local epochs (default: the task's)")] = None,
    lr: Annotated[float | None, typer.Option(help="local learning rate (default: the task's)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="local batch size (default: the task's)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where runs/<timestamp>/ goes")] = Path("runs"),
    key_source: Annotated[
        str, typer.Option(help="mlkem | qkd | hybrid: with qkd/hybrid a simulated KME pair (BB84) supplies keys")
    ] = "mlkem",
    enclave: Annotated[
        str, typer.Option(help="simulated: decryption, aggregation and signing in an attested enclave process; none")
    ] = "simulated",
    attackers: Annotated[
        str | None, typer.Option(help="adversaries to add: comma list of impersonate,replay,tamper,revoked")
    ] = None,
    aggregator: Annotated[
        str, typer.Option(help="aggregation.rule: bounded-fedavg (default), fedavg, median, trimmed-mean, krum, "
                          "multi-krum, bulyan, centered-clipping, norm-bound, fltrust (needs "
                          "--aggregator-params '{\"root_task\": TASK}')")
    ] = "bounded-fedavg",
    aggregator_params: Annotated[
        str | None, typer.Option(help='aggregation.params as a JSON object, e.g. \'{"f": 2}\'')
    ] = None,
    attack: Annotated[
        str | None, typer.Option(help="model poisoning by enrolled devices: sign-flip, scaling, gaussian, label-flip, "
                                 "sample-inflation, alie, ipm (simulation only; docs/robustness.md)")
    ] = None,
    attack_params: Annotated[str | None, typer.Option(help='the attack\'s parameters as JSON, e.g. \'{"factor": 10}\'')
                             ] = None,
    malicious_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of devices running --attack (chosen from --seed)")
    ] = 0.3,
    devices_per_process: Annotated[
        int | None, typer.Option(min=1, help="virtual devices per edge process or Ray actor (1: a process per "
                                 "device; default: 2 processes up to 100 devices, one per 50 above; --backend ray: "
                                 "one actor per CPU of the cluster)")
    ] = None,
    backend: Annotated[
        str, typer.Option(help="process: edge processes on this machine; ray: the same virtual devices in Ray "
                          "actors (pip install 'qflare[ray]'; a local cluster unless --ray-address)")
    ] = "process",
    ray_address: Annotated[
        str | None, typer.Option(help="--backend ray: an existing cluster (HOST:PORT, ray://HOST:PORT or auto); "
                                 "its nodes must reach the server and the run directory")
    ] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="traffic/pollution: your CSV (timestamp column(s) + one "
                                             "column per sensor) instead of the generated city")] = None,
    csv_delimiter: Annotated[str | None, typer.Option(help="field separator (default: guessed from the header)")]
    = None,
    csv_decimal: Annotated[str, typer.Option(help="decimal mark: . or ,")] = ".",
    csv_timestamp_columns: Annotated[str | None, typer.Option(help="comma list, e.g. Date,Time (default: the first)")]
    = None,
    csv_timestamp_format: Annotated[str | None, typer.Option(help="strptime format, e.g. '%d/%m/%Y %H.%M.%S' "
                                                             "(default: ISO 8601)")] = None,
    csv_columns: Annotated[str | None, typer.Option(help="comma list of sensor columns (default: all others)")]
    = None,
    csv_missing: Annotated[float | None, typer.Option(help="a reading meaning missing: 0 (METR-LA), -200 (UCI)")]
    = None,
    dp: Annotated[str, typer.Option("--dp", help="none | central: clip and noise in the aggregator (the enclave "
                                    "when there is one) | local: DP-SGD on every device (Opacus); docs/privacy.md")
                  ] = "none",
    noise_multiplier: Annotated[float | None, typer.Option(
        help="--dp central: noise std / clip; --dp local: noise std / max grad norm")] = None,
    clip: Annotated[float | None, typer.Option(help="--dp central: L2 bound on each update's step (default 1.0)")
                    ] = None,
    max_grad_norm: Annotated[float | None, typer.Option(
        help="--dp local: L2 bound on each example's gradient (default 1.0)")] = None,
    target_epsilon: Annotated[float | None, typer.Option(
        help="--dp central|local: the budget (local: per device, per example); alone, the accountant picks the "
             "noise multiplier for --rounds")] = None,
    delta: Annotated[float | None, typer.Option(help="--dp central|local: delta (default 1e-5)")] = None,
    device_profiles: Annotated[Path | None, typer.Option(help="CSV of device profiles (docs/learning.md)")] = None,
    slow_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of devices --slowdown x slower")] = 0.0,
    slowdown: Annotated[float, typer.Option(min=1.0, help="how much slower the slow devices train")] = 10.0,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="probability a device abandons a task")] = 0.0,
    network_delay: Annotated[float, typer.Option(min=0.0, help="seconds added to each upload")] = 0.0,
    duty_cycle: Annotated[float, typer.Option(min=0.01, max=1.0, help="share of each minute a device is online")
                          ] = 1.0,
    mode: Annotated[str, typer.Option(help="sync | async (rounds.mode; async: FedBuff over HTTP, --rounds models "
                                      "of --buffer updates each)")] = "sync",
    buffer: Annotated[int, typer.Option(min=1, help="async: updates per published model")] = 10,
    max_staleness: Annotated[int, typer.Option(min=0, help="async: refuse updates older than this")] = 10,
    target_accuracy: Annotated[float | None, typer.Option(
        help="report time_to_target_seconds: accuracy reached (or, for traffic/pollution, MAE at most this)")] = None,
    personalize: Annotated[str | None, typer.Option(help="finetune | fedper | ditto")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(
        min=1, help="--personalize finetune: local epochs of fine-tuning (default: the task's)")] = None,
    selector: Annotated[str, typer.Option(help="rounds.selector: uniform | adaptive (sync rounds)")] = "uniform",
    in_process: Annotated[bool, typer.Option(
        "--in-process", help="--mode async / --personalize: the in-process run instead of HTTP (async on a "
                             "virtual clock: what benchmarks/learning_figures.py measures)")] = False,
    he: Annotated[str, typer.Option("--he", help="none | ckks: devices encrypt their updates (TenSEAL CKKS) inside "
                                    "the envelopes, the server sums ciphertexts blind over HTTP (FedAvg, enclave "
                                    "none; docs/privacy.md)")] = "none",
    he_inprocess: Annotated[bool, typer.Option("--he-inprocess", help="--he ckks without HTTP (library run: "
                                               "payload sizes and local times only)")] = False,
    long_poll: Annotated[float | None, typer.Option(
        min=0.0, max=30.0, help="seconds each device's task poll may be held by the server until a round opens or "
        "closes (0: plain polling; default: 10, 30 above 300 devices)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON on the last line")] = False,
) -> None:
    """Run a federated training simulation over real HTTP and write runs/<timestamp>/."""
    # Every option is checked before anything heavy is imported or started (a typo costs a second, not 20).
    params = check_options(task=task, partition=partition, key_source=key_source, enclave=enclave,
                           attackers=attackers, aggregator=aggregator, aggregator_params=aggregator_params)
    csv_layout = check_csv(task, csv, delimiter=csv_delimiter, decimal=csv_decimal,
                           timestamp_columns=csv_timestamp_columns, timestamp_format=csv_timestamp_format,
                           columns=csv_columns, missing=csv_missing)
    privacy = check_privacy(dp, noise_multiplier=noise_multiplier, clip=clip, target_epsilon=target_epsilon,
                            delta=delta, fraction=fraction, rounds=rounds)
    local_dp = check_local_privacy(dp, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                   target_epsilon=target_epsilon, delta=delta, rounds=rounds)
    check_backend(backend, ray_address, in_process=he != "none" or mode != "sync" or personalize is not None)
    from qflare.cli.simulate_city import build_profiles, run_async_inprocess, run_personalize_inprocess

    _choice("--mode", mode, ("sync", "async"))
    _choice("--selector", selector, ("uniform", "adaptive"))
    _choice("--he", he, ("none", "ckks"))
    if he == "ckks":
        check_he_options(dp=dp, attack=attack, attackers=attackers, aggregator=aggregator, mode=mode,
                         personalize=personalize, csv=csv)
    if personalize is not None:
        _choice("--personalize", personalize, ("finetune", "fedper", "ditto"))
    if mode == "async":
        from qflare.fl.asynchronous import AsyncConfig

        AsyncConfig(buffer=buffer, max_staleness=max_staleness).check(clients)
    profiles = build_profiles(clients, seed, device_profiles=device_profiles, slow_fraction=slow_fraction,
                              slowdown=slowdown, dropout=dropout, network_delay=network_delay, duty_cycle=duty_cycle)
    if he == "ckks" and profiles is not None:
        raise ConfigError("--he ckks: not with device profiles (--device-profiles, --slow-fraction, --dropout, "
                          "--network-delay, --duty-cycle)", reason="bad_option")
    from qflare.fl.tasks import get_task
    from qflare.sim.runner import SimulationConfig, default_deadline, default_long_poll

    t = get_task(task)
    if partition is not None and partition not in t.partitions:
        raise ConfigError(f"--partition: task {task} supports {', '.join(t.partitions)}, not {partition!r}",
                          reason="bad_option")
    partition = partition or t.partitions[0]
    overrides = {k: v for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size}.items() if v is not None}
    train = TrainConfig.model_validate({**t.default_train_config().model_dump(), **overrides,
                                        **({"dp": local_dp} if local_dp else {})})
    if local_dp and in_process and (mode == "async" or personalize is not None):
        raise ConfigError("--dp local: served by the HTTP runs only (not --in-process)", reason="bad_option")
    if train.dp is not None:
        check_local_plan(t, train, clients=clients, partition=partition, alpha=alpha, seed=seed)
    if he == "ckks" and he_inprocess:
        console.print(f"[bold]QFLARE simulate[/]: in-process run (CKKS: {clients} devices encrypt, the aggregator "
                      "sums ciphertexts under the public context, devices decrypt); not over HTTP")
        print(json.dumps(run_he_inprocess(task=task, clients=clients, rounds=rounds, partition=partition,
                                          alpha=alpha, seed=seed, train=train), sort_keys=True))
        return
    if in_process and (mode == "async" or personalize is not None):
        console.print("[bold]QFLARE simulate[/]: in-process run (" + ("async FedBuff, virtual clock" if mode == "async"
                      else f"personalize {personalize}") + "; --in-process: no HTTP, keys, enclave or ledger)")
        extra = (run_async_inprocess(task=task, clients=clients, partition=partition, alpha=alpha, seed=seed,
                                     profiles=profiles, buffer=buffer, max_staleness=max_staleness,
                                     target=target_accuracy, train=train, max_trainings=rounds * clients)
                 if mode == "async" else
                 run_personalize_inprocess(task=task, clients=clients, rounds=rounds, partition=partition,
                                           alpha=alpha, seed=seed, method=personalize or "",
                                           finetune_epochs=finetune_epochs))
        print(json.dumps(extra, sort_keys=True))
        return
    sim = SimulationConfig(
        task=task, clients=clients, rounds=rounds, partition=partition, alpha=alpha, seed=seed,
        fraction=fraction, deadline_seconds=default_deadline(clients) if deadline is None else deadline,
        train=train, runs_dir=runs_dir,
        attackers=tuple(a.strip() for a in attackers.split(",") if a.strip()) if attackers else (),
        key_source=key_source,
        # CKKS: the host sums the ciphertexts (it needs no secret; docs/privacy.md), FedAvg is the only rule.
        enclave="none" if he == "ckks" else enclave,
        aggregator="fedavg" if he == "ckks" else aggregator,
        he=he,
        aggregator_params=params,
        attack=attack,
        attack_params=_attack_params(attack, attack_params),
        malicious_fraction=malicious_fraction if attack else 0.0,
        devices_per_process=devices_per_process,
        csv_path=csv, csv_layout=csv_layout,
        privacy=privacy,
        long_poll_seconds=default_long_poll(clients) if long_poll is None else long_poll,
        backend=backend,
        ray_address=ray_address,
        mode=mode, buffer=buffer, max_staleness=max_staleness, selector=selector, target=target_accuracy,
        personalize=personalize, personalize_epochs=finetune_epochs,
    )
    from qflare.sim.runner import check_partition

    check_partition(sim)  # the data (the user's CSV too) split as every edge will: refused before the banner
    with contextlib.ExitStack() as stack:
        if backend == "ray":  # connected (or a local cluster started) here: a bad address is one line, nothing run
            from qflare.sim.ray_fleet import ray_cluster

            stack.enter_context(ray_cluster(ray_address))
        summary = _run_http(sim, t.metric, profiles, clients=clients, rounds=rounds, backend=backend,
                            ray_address=ray_address, dp=dp)
    if json_out:
        print(json.dumps(summary, sort_keys=True))


def _run_http(sim: SimulationConfig, metric: str, profiles: Any, *, clients: int, rounds: int, backend: str,
              ray_address: str | None, dp: str) -> dict[str, Any]:
    """The banner, the live progress and the summary of a run over HTTP."""
    from qflare.sim.runner import run_simulation

    task, partition, alpha, train = sim.task, sim.partition, sim.alpha, sim.train
    key_source = sim.key_source
    assert train is not None  # simulate() always resolves it
    console.print(
        f"[bold]QFLARE simulate[/]: task={task} clients={clients} rounds={rounds} {partition}"
        + (f"({alpha})" if partition == "dirichlet" else "")
        + f" epochs={train.epochs} lr={train.lr} batch={train.batch_size} key_source={key_source} enclave={sim.enclave}"
        + f" aggregator={sim.aggregator}" + (f" dp={dp}" if dp != "none" else "")
        + (" he=ckks (devices encrypt; the host sums ciphertexts, enclave none)" if sim.he == "ckks" else "")
        + (f" mode=async buffer={sim.buffer} max_staleness={sim.max_staleness}" if sim.mode == "async" else "")
        + (f" backend=ray{'@' + ray_address if ray_address else ''}" if backend == "ray" else "")
    )
    with Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        overall = progress.add_task("rounds", total=rounds, info="starting server and edge nodes")
        current = progress.add_task("round -", total=clients, info="")

        def on_progress(status: dict[str, Any]) -> None:
            metric = status["metric"]
            latest = (status.get("latest_metrics") or {}).get(metric)
            shown = f"{metric} {latest:.4f}" if isinstance(latest, float) else ""
            progress.update(overall, completed=status["rounds_completed"], info=shown)
            rnd = status.get("current_round")
            if rnd is not None:
                what = "buffer" if sim.mode == "async" else "round"
                progress.update(current, description=f"{what} {rnd['round_id']}",
                                total=sim.buffer if sim.mode == "async" else len(rnd["selected"]),
                                completed=status["current_round_updates"],
                                info=f"updates accepted {status['accepted_updates']}, "
                                f"rejected {status['rejected_updates']}")

        if profiles is not None:
            from qflare.sim.realistic import run_realistic_simulation

            summary = run_realistic_simulation(sim, profiles, on_progress=on_progress)
        else:
            summary = run_simulation(sim, on_progress=on_progress)
        # End on the run's final figures, not on the last poll (it read "5/10" beside "200 accepted").
        final = summary.get(f"final_{metric}")
        progress.update(overall, completed=summary["rounds_completed"],
                        info=f"{metric} {final:.4f}" if isinstance(final, float) else "")
        progress.update(current, description="all rounds", total=1, completed=1,
                        info=f"updates accepted {summary.get('accepted_updates', 0)}, "
                        f"rejected {summary.get('rejected_updates', 0)}")
    _print_summary(summary, metric)
    return summary


KEY_SOURCES = ("mlkem", "qkd", "hybrid")
SIMULATED_ENCLAVES = ("simulated", "none")
PARTITIONS = ("dirichlet", "iid", "sensor")  # config.DataConfig.partition; each task supports some


def _choice(option: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{option}: {value!r} is not one of {', '.join(allowed)}", reason="bad_option")


BACKENDS = ("process", "ray")


def check_backend(backend: str, ray_address: str | None, *, in_process: bool = False) -> None:
    """Refuse ``--backend``/``--ray-address`` misuse, Ray not installed, or a Ray address nothing answers at,
    in one line before anything starts."""
    _choice("--backend", backend, BACKENDS)
    if backend != "ray":
        if ray_address is not None:
            raise ConfigError("--ray-address: given without --backend ray", reason="bad_option")
        return
    if in_process:
        raise ConfigError("--backend ray: runs the edge nodes over HTTP; --he, --mode async and --personalize run "
                          "in process", reason="bad_option")
    from qflare.sim.ray_fleet import check_ray_address, import_ray

    import_ray()
    if ray_address is not None:
        check_ray_address(ray_address)


def check_options(
    *, task: str, partition: str | None, key_source: str, enclave: str, attackers: str | None, aggregator: str,
    aggregator_params: str | None,
) -> dict[str, Any]:
    """Refuse a bad ``qflare simulate`` option with one :class:`ConfigError` naming it; return the parsed
    ``--aggregator-params``. Imports nothing heavy (no torch, no server)."""
    from qflare.config import AggregationConfig, TaskName, parse_config
    from qflare.fl.strategies import STRATEGIES
    from qflare.sim.attacks import ATTACKS

    _choice("--task", task, get_args(TaskName))
    if partition is not None:
        _choice("--partition", partition, PARTITIONS)
    _choice("--key-source", key_source, KEY_SOURCES)
    _choice("--enclave", enclave, SIMULATED_ENCLAVES)
    for name in (a.strip() for a in (attackers or "").split(",")):
        if name:
            _choice("--attackers", name, ATTACKS)
    _choice("--aggregator", aggregator, sorted(STRATEGIES))
    try:
        params = json.loads(aggregator_params) if aggregator_params else {}
    except ValueError as exc:
        raise ConfigError(f"--aggregator-params: not JSON ({exc})", reason="bad_option") from None
    if not isinstance(params, dict):
        raise ConfigError("--aggregator-params: must be a JSON object", reason="bad_option")
    parse_config(AggregationConfig, {"rule": aggregator, "params": params}, source="--aggregator-params")
    return params


def check_privacy(dp: str, *, noise_multiplier: float | None, clip: float | None, target_epsilon: float | None,
                  delta: float | None, fraction: float, rounds: int) -> dict[str, Any]:
    """``--dp`` and its options as ``aggregation.privacy`` keys; the plan is resolved here (dp-accounting), so
    a budget the planned rounds would exceed is refused before anything starts."""
    _choice("--dp", dp, ("none", "central", "local"))
    given = {"noise_multiplier": noise_multiplier, "clip": clip, "target_epsilon": target_epsilon, "delta": delta}
    if dp == "local":
        if clip is not None:
            raise ConfigError("--clip: bounds each update in the aggregator (--dp central); --dp local bounds each "
                              "example's gradient: --max-grad-norm", reason="bad_option")
        return {}
    if dp == "none":
        used = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if used:
            raise ConfigError(f"{', '.join(used)}: given without --dp central", reason="bad_option")
        return {}
    if noise_multiplier is None and target_epsilon is None:
        raise ConfigError("--dp central: give --noise-multiplier Z or --target-epsilon E", reason="bad_option")
    from qflare.config import PrivacyConfig, parse_config
    from qflare.fl.privacy import plan_central

    doc = {"mode": dp, **{k: v for k, v in given.items() if v is not None}}
    cfg = parse_config(PrivacyConfig, doc, source="--dp options")
    try:
        plan_central(noise_multiplier=cfg.noise_multiplier, target_epsilon=cfg.target_epsilon, delta=cfg.delta,
                     sampling_rate=fraction, rounds=rounds)
    except ConfigError as exc:
        raise ConfigError(f"--dp central: {exc.message}", reason=exc.reason) from None
    return doc


def check_he_options(*, dp: str, attack: str | None, attackers: str | None, aggregator: str, mode: str,
                     personalize: str | None, csv: Path | None) -> None:
    """``--he ckks`` sums ciphertexts (FedAvg only): refuse the options it cannot honour, naming them."""
    clash = [name for name, used in (("--dp", dp != "none"), ("--attack", attack is not None),
                                     ("--attackers", bool(attackers)), ("--mode async", mode != "sync"),
                                     ("--personalize", personalize is not None), ("--csv", csv is not None),
                                     ("--aggregator", aggregator != "bounded-fedavg")) if used]
    if clash:
        raise ConfigError(f"--he ckks: runs FedAvg over ciphertexts; not with {', '.join(clash)}",
                          reason="bad_option")


def run_he_inprocess(*, task: str, clients: int, rounds: int, partition: str, alpha: float, seed: int,
                     train: TrainConfig) -> dict[str, Any]:
    """A CKKS run (:func:`qflare.fl.simulation.run_inprocess` with ``he_context``): accuracy and per-round costs."""
    from qflare.fl.he import make_context
    from qflare.fl.simulation import run_inprocess
    from qflare.fl.tasks import get_task

    tic = time.perf_counter()
    history = run_inprocess(task, clients, rounds, partition=partition, alpha=alpha, seed=seed, train_config=train,
                            he_context=make_context())
    he = [m.he for m in history if m.he is not None]
    metric = get_task(task).metric
    return {"transport": "in-process", "he": "ckks", "task": task, "clients": clients, "rounds": rounds,
            "rounds_completed": len(history), f"final_{metric}": history[-1].metrics[metric],
            "bytes_up_per_device": sum(h["bytes_up"] for h in he) / len(he) / clients,
            "plaintext_bytes_up_per_device": sum(h["plaintext_bytes_up"] for h in he) / len(he) / clients,
            "bytes_down_per_device": sum(h["bytes_down"] for h in he) / len(he),
            "encrypt_seconds_per_device": sum(h["encrypt_seconds"] for h in he) / len(he) / clients,
            "sum_seconds_per_round": sum(h["sum_seconds"] for h in he) / len(he),
            "decrypt_seconds_per_device": sum(h["decrypt_seconds"] for h in he) / len(he),
            "wall_seconds": round(time.perf_counter() - tic, 2)}


def check_local_privacy(dp: str, *, noise_multiplier: float | None, max_grad_norm: float | None,
                        target_epsilon: float | None, delta: float | None, rounds: int) -> dict[str, Any]:
    """``--dp local`` and its options as ``training.dp`` keys (``config.LocalDPConfig``); ``{}`` otherwise."""
    if dp != "local":
        if max_grad_norm is not None:
            raise ConfigError("--max-grad-norm: given without --dp local", reason="bad_option")
        return {}
    if noise_multiplier is None and target_epsilon is None:
        raise ConfigError("--dp local: give --noise-multiplier Z or --target-epsilon E", reason="bad_option")
    from qflare.config import parse_config
    from qflare.fl.training_config import LocalDPConfig

    given = {"noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm, "target_epsilon": target_epsilon,
             "delta": delta}
    doc = {"mode": "local", **{k: v for k, v in given.items() if v is not None}, "rounds": rounds}
    parse_config(LocalDPConfig, doc, source="--dp local options")
    return doc


def check_local_plan(task: Any, train: TrainConfig, *, clients: int, partition: str, alpha: float, seed: int) -> None:
    """Resolve ``training.dp`` for every device's shard now (Opacus), so a budget that some device cannot meet
    in the planned rounds is one line before anything starts, not a device failing in round 1."""
    from qflare.fl.local_dp import LocalDP

    assert train.dp is not None
    sizes = sorted({len(task.client_dataset(k, clients, partition=partition, alpha=alpha, seed=seed))
                    for k in range(clients)})
    # The calibration (target_epsilon alone) costs a second or two a shard: the smallest shard (the highest
    # sampling rate) is the hardest to meet. A given noise multiplier is checked for every shard size.
    for n in sizes if train.dp.noise_multiplier is not None else sizes[:1]:
        try:
            LocalDP.from_config(train.dp, num_examples=n, batch_size=train.batch_size, epochs=train.epochs)
        except ConfigError as exc:
            raise ConfigError(f"--dp local: a device with {n} examples: {exc.message}", reason=exc.reason) from None


def _attack_params(attack: str | None, raw: str | None) -> dict[str, Any]:
    from qflare.fl.poisoning import POISONING_KINDS

    if attack is None:
        if raw:
            raise ConfigError("--attack-params: given without --attack", reason="bad_option")
        return {}
    _choice("--attack", attack, POISONING_KINDS)
    try:
        params = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise ConfigError(f"--attack-params: not JSON ({exc})", reason="bad_option") from None
    if not isinstance(params, dict):
        raise ConfigError("--attack-params: must be a JSON object", reason="bad_option")
    return params


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def check_csv(task: str, csv: Path | None, *, delimiter: str | None, decimal: str, timestamp_columns: str | None,
              timestamp_format: str | None, columns: str | None, missing: float | None) -> dict[str, Any]:
    """The ``--csv-*`` options as ``config.CsvLayoutConfig`` keys; the file is read once here, so a layout
    that does not fit is one line naming the CSV's line and column before anything starts."""
    given = {"delimiter": delimiter, "timestamp_columns": timestamp_columns, "timestamp_format": timestamp_format,
             "columns": columns, "missing": missing}
    if csv is None:
        used = [f"--csv-{k.replace('_', '-')}" for k, v in given.items() if v is not None] + (
            ["--csv-decimal"] if decimal != "." else [])
        if used:
            raise ConfigError(f"{', '.join(used)}: given without --csv", reason="bad_option")
        return {}
    if task.startswith("digits"):
        raise ConfigError(f"--csv: the {task} task has its own data; use --task traffic or pollution",
                          reason="bad_option")
    if not csv.is_file():
        raise ConfigError(f"--csv: {csv} does not exist or is not a file", reason="bad_option")
    _choice("--csv-decimal", decimal, (".", ","))
    from qflare.config import CsvLayoutConfig, parse_config
    from qflare.fl.data.csv_series import load_series_csv

    layout = {"delimiter": delimiter, "decimal": decimal, "timestamp_columns": _names(timestamp_columns),
              "timestamp_format": timestamp_format, "columns": _names(columns), "missing_value": missing}
    lay = parse_config(CsvLayoutConfig, layout, source="--csv options").source(str(csv)).layout
    series = load_series_csv(csv, delimiter=lay.delimiter, decimal=lay.decimal, timestamp_columns=lay.timestamp_columns,
                             timestamp_format=lay.timestamp_format, columns=lay.columns,
                             missing_sentinel=lay.missing_sentinel)
    # Long enough for the task (as the server's evaluation and every edge will check, after they started).
    from qflare.fl.data.windows import make_windows

    try:
        make_windows(series, "value", window=FORECAST_WINDOW, test_days=FORECAST_TEST_DAYS)
    except ConfigError as exc:
        days = series.num_steps / series.steps_per_day
        raise ConfigError(f"--csv: {csv} is too short for --task {task}: {exc.message} ({days:.1f} days; it needs "
                          f"{FORECAST_TEST_DAYS + 1} days beyond the window)", reason="bad_option") from None
    return layout


FORECAST_WINDOW, FORECAST_TEST_DAYS = 24, 7
"""The forecasting tasks' window (steps) and test days (``ForecastTask``'s defaults; kept here so that checking
a CSV imports no torch; ``tests/test_simulate_csv.py`` checks they agree)."""


def _print_summary(summary: dict[str, Any], metric: str) -> None:
    table = Table(title="QFLARE run summary", show_header=False)
    for key in ("task", "clients", "mode", "rounds_completed", f"final_{metric}", f"baseline_{metric}",
                "time_to_target_seconds", "personalize", f"personalized_{metric}_mean",
                f"personalized_{metric}_worst_decile", f"global_{metric}_mean", f"global_{metric}_worst_decile",
                "wall_seconds", "accepted_updates", "rejected_updates", "run_dir"):
        if key in summary and summary[key] is not None:
            val = summary[key]
            shown = (f"{val:.1f} s" if key == "wall_seconds" else f"{val:.4f}") if isinstance(val, float) else str(val)
            table.add_row(key, shown)
    console.print(table)
    privacy = summary.get("privacy")
    if privacy:
        console.print(privacy_line(privacy))
    if "poisoning" in summary:
        p = summary["poisoning"]
        console.print(f"[red]poisoning[/]: {p['attack']} {p['params']} by {', '.join(p['malicious'])}")
    if "attacks" in summary:
        at = Table("attack", "attempts", "rejected", "accepted", "reasons", title="attacks")
        for name, st in summary["attacks"].items():
            reasons = ", ".join(f"{k} {v}" for k, v in st["reasons"].items())
            at.add_row(name, str(st["attempts"]), str(st["rejected"]), str(st["accepted"]), reasons,
                       style="red" if st["accepted"] else None)
        console.print(at)


def privacy_line(privacy: dict[str, Any]) -> str:
    """The run summary's privacy spend in one line (docs/privacy.md)."""
    def num(value: Any, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, (int, float)) else "?"

    if privacy.get("mode") == "local":
        return (f"privacy: local DP (DP-SGD, per example), epsilon {num(privacy.get('epsilon'), '.3f')} on the most "
                f"exposed of {privacy.get('devices', '?')} devices (mean {num(privacy.get('epsilon_mean'), '.3f')}) "
                f"at delta {num(privacy.get('delta'), 'g')}")
    return (f"privacy: central DP (per device), epsilon {num(privacy.get('epsilon'), '.3f')} at delta "
            f"{num(privacy.get('delta'), 'g')} after {privacy.get('rounds', '?')} rounds, noise multiplier "
            f"{num(privacy.get('noise_multiplier'), '.4g')} (dp-accounting RDP)")
