"""``qflare enclave``: measure the enclave, get a quote from a (simulated) enclave, verify a quote.

qflare enclave measure [--config enclaves/enclave_config.json] [--json]
qflare enclave quote --json [--nonce HEX] [--work-dir .qflare/enclave] > quote.json
qflare enclave verify-quote quote.json --expect-measurement M [--allow-simulated] [--expect-signer S]
qflare enclave gramine-manifest --work-dir DIR [--libos ... --runtimedir ...]
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from qflare.cli.console import make_console
from qflare.crypto.keyfile import parse_public_key
from qflare.crypto.signing import VerifyKey
from qflare.enclave.client import Enclave
from qflare.enclave.config import EnclaveConfig, load_config
from qflare.enclave.gramine import GramineEnvironment
from qflare.enclave.launcher import GramineLauncher, SimulatedLauncher, load_or_create_signing_key, read_trust_root
from qflare.enclave.measurement import default_source_root, measure, signer_id
from qflare.enclave.quote import EnclavePublicKeys
from qflare.enclave.verify import verify_quote
from qflare.errors import AttestationError, ConfigError, MalformedPayload

__all__ = ["app"]

app = typer.Typer(
    help="The aggregation enclave: measurement, attestation quotes, Gramine manifest.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # never print locals: they may hold keys
)

BUNDLE_FORMAT = "qflare-quote-bundle/1"
DEFAULT_WORK_DIR = Path(".qflare/enclave")
_console = make_console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Enclave config (default: enclaves/enclave_config.json, else built-in defaults)."),
]
WorkDirOpt = Annotated[
    Path, typer.Option("--work-dir", help="Simulated enclave directory (platform, sealed state, SIGSTRUCT).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]


def _config(path: Path | None) -> EnclaveConfig:
    if path is not None:
        return load_config(path)
    default = default_source_root().parent / "enclaves" / "enclave_config.json"
    return load_config(default) if default.exists() else EnclaveConfig()


def _hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise typer.BadParameter(f"{what} must be hex") from None


@app.command("measure")
def measure_cmd(
    config: ConfigOpt = None,
    signer_key: Annotated[
        Path | None, typer.Option("--signer-key", help="Enclave signing key file: also print its signer id.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the enclave measurement (SHA-256 over the measured code files and the config)."""
    m = measure(_config(config))
    doc: dict[str, Any] = {
        "measurement": m.hex,
        "files": [{"path": path, "sha256": digest} for path, digest in m.files],
        "runtime": dict(m.runtime),
        "config": m.config.to_dict(),
    }
    if signer_key is not None:
        doc["signer"] = signer_id(load_or_create_signing_key(signer_key).public_key().to_bytes()).hex()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    _console.print(f"measurement  {m.hex}")
    if "signer" in doc:
        _console.print(f"signer       {doc['signer']}")
    _console.print(f"files        {len(m.files)} measured modules; runtime {doc['runtime']}")


@app.command("quote")
def quote_cmd(
    nonce: Annotated[str | None, typer.Option("--nonce", help="Verifier challenge, hex (random when omitted).")] = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the simulated enclave in WORK_DIR and print a quote bundle for NONCE."""
    challenge = _hex(nonce, "--nonce") if nonce is not None else os.urandom(32)
    cfg = _config(config)
    signer = load_or_create_signing_key(work_dir / "signer-dev-key.json")
    launcher = SimulatedLauncher(work_dir, config=cfg, signing_key=signer)
    with Enclave(launcher) as enclave:
        identity = enclave.identity()
        quote = enclave.quote(challenge)
    bundle = {
        "format": BUNDLE_FORMAT,
        "quote": base64.b64encode(quote).decode("ascii"),
        "nonce": challenge.hex(),
        "public_keys": base64.b64encode(identity.public_keys.encode()).decode("ascii"),
        "measurement": identity.measurement.hex(),
        "signer": identity.signer.hex(),
        "isv_svn": identity.isv_svn,
        "simulated": identity.simulated,
    }
    if as_json:
        typer.echo(json.dumps(bundle, indent=2))
        return
    _console.print(f"quote for nonce {challenge.hex()} from a {identity.platform} enclave")
    _console.print(f"measurement  {identity.measurement.hex()}\nsigner       {identity.signer.hex()}")
    _console.print(f"trust root   {launcher.platform_dir / 'attestation-root.pub'}")


def _read_bundle(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AttestationError(f"cannot read quote bundle {path}: {exc}", reason="malformed_quote") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise AttestationError(f"{path} is not a {BUNDLE_FORMAT} file", reason="malformed_quote")
    return doc


def _trust_root(trust_root: Path | None, platform_dir: Path) -> VerifyKey:
    if trust_root is None:
        return read_trust_root(platform_dir)
    data = trust_root.read_bytes()
    try:
        key = parse_public_key(data)
    except MalformedPayload:
        return VerifyKey.from_bytes(data)
    if not isinstance(key, VerifyKey):
        raise ConfigError(f"{trust_root} is not a signing public key", reason="invalid_config")
    return key


@app.command("verify-quote")
def verify_quote_cmd(
    bundle_file: Annotated[Path, typer.Argument(help="Quote bundle from `qflare enclave quote --json`.")],
    expect_measurement: Annotated[str, typer.Option("--expect-measurement", help="Pinned measurement, hex.")],
    allow_simulated: Annotated[
        bool, typer.Option("--allow-simulated", help="Accept a simulated enclave (demos only).")
    ] = False,
    expect_signer: Annotated[
        str | None, typer.Option("--expect-signer", help="Pinned signer, hex (unpinned when omitted: warned).")
    ] = None,
    nonce: Annotated[
        str | None, typer.Option("--nonce", help="The challenge you sent, hex (default: the bundle's).")
    ] = None,
    min_svn: Annotated[int, typer.Option("--min-svn", min=0, max=65535, help="Lowest security version.")] = 1,
    allow_debug: Annotated[bool, typer.Option("--allow-debug", help="Accept a debug enclave.")] = False,
    trust_root: Annotated[
        Path | None, typer.Option("--trust-root", help="Simulated platform root (key file or raw bytes).")
    ] = None,
    platform_dir: Annotated[
        Path, typer.Option("--platform-dir", help="Read the trust root from this simulated platform.")
    ] = DEFAULT_WORK_DIR / "platform",
    as_json: JsonOpt = False,
) -> None:
    """Verify a quote bundle; exits non-zero (attestation error) when it does not verify."""
    doc = _read_bundle(bundle_file)
    try:
        quote = base64.b64decode(str(doc["quote"]), validate=True)
        keys = EnclavePublicKeys.decode(base64.b64decode(str(doc["public_keys"]), validate=True))
        bundle_nonce = bytes.fromhex(str(doc["nonce"]))
        quoted_signer = str(doc["signer"])
    except (KeyError, ValueError, binascii.Error, MalformedPayload):
        raise AttestationError(f"{bundle_file} is missing or has malformed fields", reason="malformed_quote") from None
    challenge = _hex(nonce, "--nonce") if nonce is not None else bundle_nonce
    if expect_signer is None:
        typer.echo(f"warning: signer not pinned; accepting {quoted_signer}", err=True)
    root = _trust_root(trust_root, platform_dir) if doc.get("simulated", True) else None
    verified = verify_quote(
        quote,
        trust_root=root,
        expected_measurement=expect_measurement,
        expected_signer=expect_signer if expect_signer is not None else quoted_signer,
        nonce=challenge,
        served_public_keys=keys,
        allow_simulated=allow_simulated,
        min_svn=min_svn,
        allow_debug=allow_debug,
    )
    result = {
        "verified": True,
        "format": verified.format,
        "simulated": verified.simulated,
        "measurement": verified.measurement.hex(),
        "signer": verified.signer.hex(),
        "isv_svn": verified.isv_svn,
        "debug": verified.debug,
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        kind = "SIMULATED enclave" if verified.simulated else "SGX enclave"
        _console.print(f"[green]quote verified[/]: {kind}, measurement {verified.measurement.hex()}, "
                       f"svn {verified.isv_svn}")  # fmt: skip


@app.command("gramine-manifest")
def gramine_manifest_cmd(
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Where the manifest and sealed state go.")],
    config: ConfigOpt = None,
    libos: Annotated[str | None, typer.Option("--libos", help="Gramine libsysdb.so (default: detect).")] = None,
    runtimedir: Annotated[str | None, typer.Option("--runtimedir", help="Gramine runtime dir.")] = None,
    arch_libdir: Annotated[str, typer.Option("--arch-libdir")] = "/lib/x86_64-linux-gnu",
) -> None:
    """Render enclaves/qflare-enclave.manifest.template for this checkout (sign it with gramine-sgx-sign)."""
    if (libos is None) != (runtimedir is None):
        raise typer.BadParameter("give both --libos and --runtimedir, or neither")
    env = (
        GramineEnvironment(libos=libos, runtimedir=runtimedir, arch_libdir=arch_libdir)
        if libos is not None and runtimedir is not None
        else GramineEnvironment.detect()
    )
    path = GramineLauncher(work_dir, config=_config(config), gramine=env).render()
    typer.echo(str(path))
