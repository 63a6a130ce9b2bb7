"""``qflare bench``: measured figures, each against a baseline measured in the same run."""

from __future__ import annotations

import json
import warnings
from typing import Annotated, Any

import typer
from rich.table import Table

from qflare.cli.console import make_console

app = typer.Typer(help="Benchmarks: print measured figures (and --json for machines). Without a NAME: all of them.",
                  invoke_without_command=True)
console = make_console()

JsonOut = Annotated[bool, typer.Option("--json", help="print the figures as JSON on the last line")]


def _flat(prefix: str, obj: Any) -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        return [row for k, v in obj.items() for row in _flat(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, f"{obj:.4g}" if isinstance(obj, float) else str(obj))]


def _show(title: str, figures: dict[str, Any], json_out: bool) -> None:
    table = Table("figure", "value", title=title)
    for k, v in _flat("", figures):
        table.add_row(k, v)
    console.print(table)
    if json_out:
        print(json.dumps(figures))


@app.callback()
def everything(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="print all figures as one JSON object on the last line")]
    = False,
    quick: Annotated[bool, typer.Option(help="small budgets (about a minute; noisier figures)")] = False,
) -> None:
    """Without a NAME, run every benchmark (auth, ingest, aggregate, round, qkd, enclave, ledger) with a progress
    bar."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from qflare.bench.suite import BENCHMARKS, run_all

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=make_console(stderr=True)) as bar:
        job = bar.add_task("starting", total=len(BENCHMARKS))

        def started(name: str) -> None:
            done = list(BENCHMARKS).index(name)
            bar.update(job, completed=done, description=f"qflare bench {name}")

        figures = run_all(quick=quick, on_start=started)
        bar.update(job, completed=len(BENCHMARKS), description="done")
    _show("qflare bench", figures, json_out)


@app.command()
def auth(
    requests: Annotated[int, typer.Option(help="requests per timed phase")] = 3200,
    clients: Annotated[int, typer.Option(help="concurrent clients")] = 16,
    payload: Annotated[int, typer.Option(help="payload bytes per request")] = 4096,
    postgres: Annotated[str | None, typer.Option(help="PostgreSQL URL: run each --workers count on a fresh schema "
                                                 "of it, in one run")] = None,
    workers: Annotated[str, typer.Option(help="worker counts, comma-separated (with --postgres)")] = "1,2,4",
    enclave: Annotated[bool, typer.Option(help="the simulated enclave opens and seals every request")] = False,
    json_out: JsonOut = False,
) -> None:
    """Bare FastAPI endpoint vs the post-quantum authenticated endpoint: req/s, server CPU, wire bytes.

    With ``--postgres``: the same against ``qflare server --workers K`` for each K of ``--workers``."""
    from qflare.bench.auth import run, run_scaling
    from qflare.crypto.keyfile import UnencryptedKeyWarning
    from qflare.errors import ConfigError

    try:
        counts = tuple(int(k) for k in workers.split(","))
    except ValueError:
        raise ConfigError(f"--workers: {workers!r} is not a comma-separated list of counts",
                          reason="bad_option") from None
    with warnings.catch_warnings(), console.status("building envelopes and running both phases"):
        warnings.simplefilter("ignore", UnencryptedKeyWarning)
        if postgres is not None:
            figures = run_scaling(postgres, workers=counts, requests=requests, clients=clients, payload_size=payload,
                                  enclave=enclave)
        else:
            figures = run(requests=requests, clients=clients, payload_size=payload, enclave=enclave)
    _show("qflare bench auth", figures, json_out)


@app.command()
def ingest(
    uploads: Annotated[int, typer.Option(help="authenticated uploads in the timed phase (one device each)")] = 64,
    clients: Annotated[int, typer.Option(help="concurrent senders")] = 8,
    json_out: JsonOut = False,
) -> None:
    """MB/s of authenticated 4 MB update uploads (digits-wide, 1M parameters) vs the bare endpoint's MB/s."""
    from qflare.bench.ingest import run
    from qflare.crypto.keyfile import UnencryptedKeyWarning

    with warnings.catch_warnings(), console.status("sealing the uploads and running both phases"):
        warnings.simplefilter("ignore", UnencryptedKeyWarning)
        figures = run(uploads=uploads, clients=clients)
    _show("qflare bench ingest", figures, json_out)


@app.command("round")
def round_time(
    clients: Annotated[int, typer.Option(help="virtual clients, every one in every round")] = 50,
    rounds: Annotated[int, typer.Option(help="rounds (the median is reported)")] = 3,
    task: Annotated[str, typer.Option(help="digits | digits-wide | traffic | pollution")] = "digits",
    json_out: JsonOut = False,
) -> None:
    """Round time with N virtual clients in one process vs its local training and its aggregation alone."""
    from qflare.bench.rounds import run

    with console.status(f"running {rounds} in-process rounds with {clients} clients"):
        figures = run(clients=clients, rounds=rounds, task=task)
    _show("qflare bench round", figures, json_out)


@app.command()
def aggregate(
    clients: Annotated[int, typer.Option(help="updates")] = 100,
    params: Annotated[int, typer.Option(help="float32 values per update")] = 1_000_000,
    f: Annotated[int, typer.Option(help="Krum / Multi-Krum f")] = 10,
    repeat: Annotated[int, typer.Option(help="runs per figure (best is kept)")] = 2,
    no_rules: Annotated[bool, typer.Option("--no-rules", help="skip median, trimmed mean, Krum, Multi-Krum")] = False,
    production: Annotated[bool, typer.Option(help="also the production path (envelope decrypt + parse + validate "
                                             "+ accumulate in the enclave) vs Flower's aggregate_inplace")] = True,
    production_clients: Annotated[int, typer.Option(help="updates of the production run")] = 20,
    production_params: Annotated[int, typer.Option(help="float32 values per update of the production run")]
    = 10_000_000,
    json_out: JsonOut = False,
) -> None:
    """Streaming FedAvg accumulator vs a NumPy copy and Flower-style FedAvg (GB/s), robust rule times, and the
    production enclave path vs Flower's plaintext aggregate_inplace."""
    from qflare.bench.aggregate import run

    with console.status("timing the copy baseline, the accumulator, the rules and the production path"):
        figures = run(clients=clients, params=params, f=f, repeat=repeat, rules=not no_rules, production=production,
                      production_clients=production_clients, production_params=production_params)
    _show("qflare bench aggregate", figures, json_out)


@app.command()
def qkd(
    pulses: Annotated[int, typer.Option(help="pulses per simulator call")] = 10_000_000,
    seconds: Annotated[float, typer.Option(help="duration of each benchmark")] = 3.0,
    json_out: JsonOut = False,
) -> None:
    """BB84 pulses/s (quantum part and pipeline) and ETSI GS QKD 014 key-delivery requests/s over mTLS."""
    from qflare.bench.qkd import run

    with console.status("running the QKD benchmarks"):
        figures = run(pulses, seconds)
    _show("qflare bench qkd", figures, json_out)


@app.command()
def enclave(
    updates: Annotated[int, typer.Option(help="updates per round")] = 24,
    params: Annotated[int, typer.Option(help="float32 parameters per update")] = 1_000_000,
    repeats: Annotated[int, typer.Option(help="timed rounds per backend")] = 5,
    json_out: JsonOut = False,
) -> None:
    """Updates/s and MB/s through the enclave boundary against the same work in-process."""
    from qflare.bench.enclave import run

    with console.status("running in-process and enclave rounds"):
        figures = run(updates=updates, params=params, repeats=repeats)
    _show("qflare bench enclave", figures, json_out)


@app.command()
def ledger(
    seconds: Annotated[float, typer.Option(help="time budget of each throughput and proof phase")] = 2.0,
    proof_tree: Annotated[int, typer.Option(help="leaves in the proof tree")] = 1_000_000,
    postgres: Annotated[str | None, typer.Option(help="also measure appends on this (empty) PostgreSQL URL")] = None,
    simulate: Annotated[bool, typer.Option(help="round-time cost of the ledger in qflare simulate")] = True,
    clients: Annotated[int, typer.Option(help="clients of the simulation and of the per-round cost")] = 3,
    rounds: Annotated[int, typer.Option(help="rounds of each simulation")] = 3,
    json_out: JsonOut = False,
) -> None:
    """Ledger appends/s (memory, SQLite, PostgreSQL), proofs at 1M leaves, and its cost per simulated round."""
    import tempfile
    from pathlib import Path

    from qflare.bench.ledger import ledger_round_cost, run, run_sql, simulate_cost

    with tempfile.TemporaryDirectory(prefix="qflare-bench-ledger-") as tmp, console.status("running the benchmarks"):
        work = Path(tmp)
        figures: dict[str, Any] = {"memory_and_proofs": run(seconds, proof_tree_size=proof_tree, print_report=False)}
        figures["sql"] = run_sql(seconds, work, postgres)
        figures["round"] = ledger_round_cost(work, clients=clients)
        if simulate:
            sim = simulate_cost(work, clients=clients, rounds=rounds)
            sim["ledger_share_of_round"] = figures["round"]["ledger_ms_per_round"] / 1000 / sim[
                "round_seconds_with_ledger"]
            figures["simulate"] = sim
    _show("qflare bench ledger", figures, json_out)
