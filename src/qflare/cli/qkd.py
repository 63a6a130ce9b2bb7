"""``qflare qkd``: BB84 simulation, key-rate sweep, and a simulated ETSI GS QKD 014 KME pair."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qflare.errors import QFlareError
from qflare.kme import KMEEnd, KMEListener, KMEPairServer
from qflare.qkd.bb84 import run_bb84
from qflare.qkd.channel import Channel
from qflare.qkd.keystore import BB84Link, KeyStore, KeyStoreLimits
from qflare.qkd.pki import create_demo_pki
from qflare.qkd.source import Source, SourceKind
from qflare.qkd.sweep import AnalyticCurves, SweepPoint, analytic_curves, key_rate_sweep, link_params

__all__ = ["app"]

app = typer.Typer(
    help="Simulated quantum key distribution: BB84, key rate against distance, ETSI 014 KME pair.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold key material
    add_completion=False,
)
kme_app = typer.Typer(help="A simulated ETSI GS QKD 014 KME pair fed by BB84.", no_args_is_help=True)
app.add_typer(kme_app, name="kme")

_console = Console()

DistanceOpt = Annotated[float, typer.Option("--distance-km", min=0.0, help="Fibre length in km.")]
LossOpt = Annotated[float, typer.Option("--fibre-loss", min=0.0, help="Fibre attenuation, dB/km.")]
EffOpt = Annotated[float, typer.Option("--detector-efficiency", min=0.0, max=1.0, help="Detector efficiency.")]
DarkOpt = Annotated[float, typer.Option("--dark-count", min=0.0, max=1.0, help="Dark-count probability per pulse.")]
MisOpt = Annotated[float, typer.Option("--misalignment", min=0.0, max=0.5, help="Misalignment error probability.")]
EveOpt = Annotated[float, typer.Option("--eavesdrop", min=0.0, max=1.0, help="Fraction of pulses intercepted.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed (fresh randomness when omitted).")]
MuOpt = Annotated[float, typer.Option("--mu", help="Signal mean photon number, in (0, 1].")]
NuOpt = Annotated[float, typer.Option("--nu", help="Weak decoy mean photon number, in (0, mu).")]
PDecoyOpt = Annotated[float, typer.Option("--p-decoy", help="Probability of a decoy pulse.")]
PVacuumOpt = Annotated[float, typer.Option("--p-vacuum", help="Probability of a vacuum pulse.")]
PNSOpt = Annotated[bool, typer.Option("--pns", help="Photon-number-splitting eavesdropper on the link.")]
_GYS = {"fibre_loss": 0.21, "detector_efficiency": 0.045, "dark_count": 8.5e-7, "misalignment": 0.033}


def _source(kind: str, mu: float, nu: float, p_decoy: float = 0.1, p_vacuum: float = 0.1) -> Source:
    try:
        chosen = SourceKind(kind)
    except ValueError:
        raise typer.BadParameter(f"--source must be one of {', '.join(k.value for k in SourceKind)}") from None
    try:
        if chosen is SourceKind.DECOY:
            return Source.decoy_state(mu, nu, p_signal=1.0 - p_decoy - p_vacuum, p_decoy=p_decoy, p_vacuum=p_vacuum)
        return Source.weak_coherent(mu) if chosen is SourceKind.WEAK_COHERENT else Source.single_photon()
    except QFlareError as exc:
        raise typer.BadParameter(exc.message) from None


@app.command()
def bb84(
    pulses: Annotated[int, typer.Option("--pulses", min=1, help="Pulses Alice sends.")] = 1_000_000,
    distance_km: DistanceOpt = 10.0,
    eavesdrop: EveOpt = 0.0,
    seed: SeedOpt = None,
    fibre_loss: LossOpt = 0.2,
    detector_efficiency: EffOpt = 0.2,
    dark_count: DarkOpt = 1e-6,
    misalignment: MisOpt = 0.01,
    source: Annotated[str, typer.Option("--source", help="single-photon, weak-coherent or decoy.")] = "single-photon",
    mu: MuOpt = 0.5,
    nu: NuOpt = 0.1,
    p_decoy: PDecoyOpt = 0.1,
    p_vacuum: PVacuumOpt = 0.1,
    pns: PNSOpt = False,
    backend: Annotated[
        str, typer.Option("--backend", help="vectorised, aer (Qiskit simulator) or ibm (IBM Quantum).")
    ] = "vectorised",
    ibm_token: Annotated[
        str | None,
        typer.Option("--ibm-token", envvar="QFLARE_IBM_TOKEN", show_default=False, help="IBM Quantum token."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON (last line).")] = False,
) -> None:
    """Run one BB84 session and print what each stage produced."""
    channel = Channel(distance_km, fibre_loss, detector_efficiency, dark_count, misalignment)
    src = _source(source, mu, nu, p_decoy, p_vacuum)
    try:
        result = run_bb84(
            pulses, channel, source=src, pns=pns, eavesdrop=eavesdrop, seed=seed, backend=backend, ibm_token=ibm_token
        )
    except QFlareError as exc:
        _console.print(f"[red]error ({exc.reason}): {exc.message}[/red]")
        raise typer.Exit(2) from None
    summary = result.summary()
    attack = ", PNS attack" if pns else ""
    table = Table(title=f"BB84 ({src.kind.value}) over {distance_km:g} km, intercept-resend {eavesdrop:.0%}{attack}")
    table.add_column("stage")
    table.add_column("value", justify="right")
    rows = [
        ("pulses", f"{result.pulses:,}"),
        ("transmittance", f"{channel.transmittance:.4g}"),
        ("detected", f"{result.detected:,}"),
        ("sifted bits", f"{result.sifted_bits:,}"),
        ("sampled (disclosed) bits", f"{result.sample_bits:,}"),
        ("QBER estimated", f"{result.qber_estimated:.4%}"),
        ("QBER true", f"{result.qber_true:.4%}"),
        ("leaked bits (EC + verify)", f"{result.leaked_bits:,}"),
        ("final key bits", f"{result.final_key_bits:,}"),
        ("key rate per pulse", f"{result.key_rate:.4g}"),
        ("aborted", f"{result.aborted} ({result.abort_reason})" if result.aborted else "False"),
    ]
    for name in ("y1_lower", "e1_upper", "single_photon_bits_lower", "multi_photon_fraction_upper"):
        if name in result.estimates:
            rows.append((name.replace("_", " "), f"{result.estimates[name]:.4g}"))
    if pns:
        rows.append(("Eve knows (corrected key bits)", f"{result.eve_known_bits:,}"))
        rows.append(("Eve's info on the final key (bits)", f"{result.eve_key_info_bits:,}"))
    for name, value in rows:
        table.add_row(name, value)
    _console.print(table)
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))


_STYLE = {"single-photon": ("C2", "s"), "weak-coherent": ("C1", "^"), "decoy": ("C3", "o")}


def _plot(curves: AnalyticCurves, points: dict[str, list[SweepPoint]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 5.2))
    d = curves.distances_km
    md = curves.max_distance_km

    def line(values: list[float], style: str, label: str) -> None:
        xy = [(x, y) for x, y in zip(d, values, strict=True) if y > 0]
        if xy:
            ax.plot(*zip(*xy, strict=True), style, label=label)

    line(curves.plob, "k-", "PLOB bound $-\\log_2(1-\\eta)$")
    line(curves.single_photon, "C2--", f"single photons, asymptotic (ends {md['single_photon']:.0f} km)")
    line(curves.decoy_infinite, "C3-", f"decoy, infinite decoys, asymptotic ({md['decoy_infinite']:.0f} km)")
    line(curves.vacuum_weak, "C3:", f"vacuum + weak decoy, asymptotic ({md['vacuum_weak']:.0f} km)")
    line(curves.no_decoy, "C1-.", f"no decoy (GLLP), asymptotic ({md['no_decoy']:.0f} km)")
    for kind, pts in points.items():
        colour, marker = _STYLE[kind]
        sim = [(p.distance_km, p.key_rate) for p in pts if p.key_rate > 0]
        if sim:
            ax.plot(*zip(*sim, strict=True), color=colour, marker=marker, linestyle="none",
                    label=f"simulated {kind} (finite size)")  # fmt: skip
    ax.set_yscale("log")
    positive = [v for v in curves.no_decoy + curves.single_photon if v > 0]
    ax.set_ylim(bottom=max(min(positive, default=1e-9) / 100, 1e-9))
    ax.set_xlabel("fibre length (km)")
    ax.set_ylabel("secret key bits per pulse")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


@app.command()
def sweep(
    out: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("qkd_keyrate.png"),
    max_km: Annotated[float, typer.Option("--max-km", min=0.0, help="Longest fibre.")] = 240.0,
    step_km: Annotated[float, typer.Option("--step-km", min=0.1, help="Distance step.")] = 20.0,
    detections: Annotated[int, typer.Option("--detections", min=1, help="Target clicks per point.")] = 1_000_000,
    max_pulses: Annotated[int, typer.Option("--max-pulses", min=1, help="Pulse cap per point.")] = 2_000_000_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first point.")] = 0,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Simulate this source (repeat): single-photon, weak-coherent, decoy [all]."),
    ] = None,
    mu: MuOpt = 0.5,
    nu: NuOpt = 0.1,
    p_decoy: PDecoyOpt = 0.1,
    p_vacuum: PVacuumOpt = 0.1,
    mu_no_decoy: Annotated[float, typer.Option("--mu-no-decoy", help="Signal mu of the weak-coherent source.")] = 0.05,
    gys: Annotated[
        bool, typer.Option("--gys", help="The GYS link of Lo, Ma & Chen 2005 (overrides the four channel options).")
    ] = False,
    fibre_loss: LossOpt = 0.2,
    detector_efficiency: EffOpt = 0.2,
    dark_count: DarkOpt = 1e-6,
    misalignment: MisOpt = 0.01,
    as_json: Annotated[bool, typer.Option("--json", help="Print the points as JSON (last line).")] = False,
) -> None:
    """Key rate per pulse against distance for each source, the analytic curves and PLOB (log scale)."""
    if gys:
        fibre_loss, detector_efficiency = _GYS["fibre_loss"], _GYS["detector_efficiency"]
        dark_count, misalignment = _GYS["dark_count"], _GYS["misalignment"]
    kinds = source or [k.value for k in SourceKind]
    sources = {
        k: _source(k, mu_no_decoy if k == SourceKind.WEAK_COHERENT.value else mu, nu, p_decoy, p_vacuum) for k in kinds
    }
    steps = int(max_km // step_km)
    distances = [i * step_km for i in range(steps + 1)]
    channel = Channel(0.0, fibre_loss, detector_efficiency, dark_count, misalignment)
    points = {
        kind: key_rate_sweep(
            distances, channel=channel, source=src, detections=detections, max_pulses=max_pulses, seed=seed
        )
        for kind, src in sources.items()
    }
    dense = [i * max_km / 200 for i in range(201)]
    curves = analytic_curves(link_params(channel), dense, nu=min(nu, 0.05))
    for kind, pts in points.items():
        table = Table(title=f"{kind}: key rate against distance (bits per pulse)")
        for col in ("km", "pulses", "eta", "PLOB", "model", "simulated", "QBER est.", "note"):
            table.add_column(col, justify="right")
        for p in pts:
            table.add_row(
                f"{p.distance_km:g}",
                f"{p.pulses:.3g}",
                f"{p.transmittance:.3g}",
                f"{p.plob_bound:.3g}",
                f"{p.model_rate:.3g}",
                f"{p.key_rate:.3g}",
                f"{p.qber_estimated:.3%}",
                p.abort_reason or "",
            )
        _console.print(table)
    ends = ", ".join(f"{k} {v:.1f} km" for k, v in curves.max_distance_km.items())
    _console.print(f"asymptotic maximum distances: {ends}")
    title = (
        f"{fibre_loss} dB/km, $\\eta_{{Bob}}$={detector_efficiency}, $Y_0$={2 * dark_count:.2g}, $e_d$={misalignment}"
    )
    _plot(curves, points, out, ("GYS link (Lo, Ma, Chen 2005): " if gys else "") + title)
    _console.print(f"wrote {out}")
    if as_json:
        flat = [p.as_dict() for pts in points.values() for p in pts]
        typer.echo(json.dumps({"out": str(out), "points": flat, "max_distance_km": curves.max_distance_km}))


@kme_app.command("pki")
def kme_pki(
    directory: Annotated[Path, typer.Argument(help="Directory to write the CA, KME and SAE certificates to.")],
    sae: Annotated[list[str] | None, typer.Option("--sae", help="SAE ID (repeat); default edge-1, server.")] = None,
    dns_name: Annotated[list[str] | None, typer.Option(
        "--dns-name", help="host name of the KMEs' certificates (repeat); default localhost.")] = None,
) -> None:
    """Create a demo PKI: a CA, server certificates kme-a/kme-b, a client certificate per SAE."""
    sae_ids = tuple(sae) if sae else ("edge-1", "server")
    pki = create_demo_pki(directory, sae_ids=sae_ids, hosts=tuple(dns_name) if dns_name else ("localhost",))
    typer.echo(f"CA            {pki.ca}")
    for name in ("kme-a", "kme-b", *sae_ids):
        typer.echo(f"{name:<13} {pki.cert(name)}  {pki.key(name)}")


@kme_app.command("serve")
def kme_serve(
    cert: Annotated[Path, typer.Option("--cert", exists=True, dir_okay=False, help="KME A server certificate.")],
    key: Annotated[Path, typer.Option("--key", exists=True, dir_okay=False, help="KME A server key.")],
    ca: Annotated[Path, typer.Option("--ca", exists=True, dir_okay=False, help="CA of the SAE certificates.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="KME A port (0: any free).")] = 8443,
    port_b: Annotated[int | None, typer.Option("--port-b", min=0, max=65535, help="KME B port [port+1].")] = None,
    cert_b: Annotated[Path | None, typer.Option("--cert-b", exists=True, help="KME B certificate [--cert].")] = None,
    key_b: Annotated[Path | None, typer.Option("--key-b", exists=True, help="KME B key [--key].")] = None,
    kme_a_id: Annotated[str, typer.Option("--kme-a-id", help="KME A ID.")] = "kme-a",
    kme_b_id: Annotated[str, typer.Option("--kme-b-id", help="KME B ID.")] = "kme-b",
    sae_a: Annotated[list[str] | None, typer.Option("--sae-a", help="SAE attached to KME A (repeat).")] = None,
    sae_b: Annotated[list[str] | None, typer.Option("--sae-b", help="SAE attached to KME B (repeat).")] = None,
    distance_km: DistanceOpt = 10.0,
    eavesdrop: EveOpt = 0.0,
    pulses_per_frame: Annotated[int, typer.Option("--pulses-per-frame", min=1000)] = 2_000_000,
    initial_keys: Annotated[int, typer.Option("--initial-keys", min=0, help="256-bit keys to distil first.")] = 1000,
    max_keys: Annotated[int, typer.Option("--max-keys", min=1, help="Pool capacity in 256-bit keys.")] = 100_000,
    refill: Annotated[bool, typer.Option("--refill/--no-refill", help="Keep distilling in the background.")] = True,
    seed: SeedOpt = None,
) -> None:
    """Serve KME A and KME B (ETSI GS QKD 014 over mutual TLS), sharing BB84-distilled keys.

    An SAE attached to KME A (e.g. an edge node) obtains keys with enc_keys; the SAE attached to
    KME B (the server) fetches each of them once with dec_keys. Stop with Ctrl-C or SIGTERM.
    """
    store = KeyStore(KeyStoreLimits(max_key_count=max_keys))
    link = BB84Link(
        store, Channel(distance_km=distance_km), pulses_per_frame=pulses_per_frame, eavesdrop=eavesdrop, seed=seed
    )
    link.fill(initial_keys * 32)
    status = store.status()
    if link.last is not None and link.last.aborted:
        _console.print(
            f"[yellow]BB84 link aborted: {link.last.abort_reason} "
            f"(QBER {link.last.qber_estimated:.2%}); the KMEs will answer out_of_key[/yellow]"
        )
    a = KMEListener(KMEEnd(kme_a_id, frozenset(sae_a) if sae_a else None), port, cert, key)
    b = KMEListener(
        KMEEnd(kme_b_id, frozenset(sae_b) if sae_b else None),
        port + 1 if port_b is None and port else (port_b or 0),
        cert_b or cert,
        key_b or key,
    )
    server = KMEPairServer(store, a=a, b=b, ca=ca, host=host)
    server.start()
    if refill:
        link.start(low_water_bytes=max(initial_keys, 1) * 32)
    url_a, url_b = server.urls
    info: dict[str, Any] = {
        "kme_a": url_a,
        "kme_b": url_b,
        "stored_key_count": status.stored_key_count,
        "frames": link.frames,
    }
    typer.echo(json.dumps(info), nl=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        link.stop()
        server.stop()


if __name__ == "__main__":  # pragma: no cover - `python -m qflare.cli.qkd` for benchmarks
    app()
