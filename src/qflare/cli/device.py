"""``qflare device``: identity keys on the device; enrollment, tokens, revocation and listing for operators."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.table import Table

from qflare.cli.console import make_console
from qflare.cli.operator import DEFAULT_SERVER, OperatorClient, resolve_operator_token
from qflare.environment import environment
from qflare.errors import ConfigError
from qflare.server.schemas import DEVICE_ID_PATTERN

app = typer.Typer(help="Device identities: keygen on the device; enroll, token, revoke, list for operators.",
                  no_args_is_help=True)
console = make_console()

Server = Annotated[str, typer.Option("--server", envvar="QFLARE_SERVER", help="server URL")]
AdminToken = Annotated[str | None, typer.Option("--admin-token", help="operator token (or $QFLARE_ADMIN_TOKEN)")]
CAFile = Annotated[Path | None, typer.Option("--ca-file", help="pinned CA for an HTTPS server")]


def _verify(ca_file: Path | None) -> object:
    import ssl

    return ssl.create_default_context(cafile=str(ca_file)) if ca_file else True


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def check_device_id(device_id: str, option: str = "--device-id") -> None:
    """A device id names files and URL paths: letters, digits, ``_ . -``, at most 64, never ``.``/``..``."""
    if not re.fullmatch(DEVICE_ID_PATTERN, device_id) or device_id in {".", ".."}:
        raise ConfigError(f"{option}: {device_id!r} is not a device id (1-64 letters, digits, '_', '.', '-')",
                          reason="bad_option")


@app.command()
def keygen(
    device_id: Annotated[str, typer.Option("--device-id", help="the device's id")],
    out_dir: Annotated[Path, typer.Option(help="where <id>.key and <id>.pub go")] = Path("."),
    passphrase_env: Annotated[str | None, typer.Option(help="encrypt the key with the passphrase in this env var")]
    = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing key")] = False,
) -> None:
    """Create the device's hybrid ML-DSA-65 + Ed25519 identity (run this ON the device)."""
    import warnings

    from qflare.crypto import SigningKey
    from qflare.crypto.keyfile import UnencryptedKeyWarning, fingerprint, write_private_key, write_public_key
    from qflare.crypto.secret_access import TOKEN

    check_device_id(device_id)
    key_path, pub_path = out_dir / f"{device_id}.key", out_dir / f"{device_id}.pub"
    if key_path.exists() and not force:
        raise ConfigError(f"{key_path} exists; use --force to replace the identity", reason="key_exists")
    passphrase = None
    if passphrase_env:
        passphrase = environment().named(passphrase_env)
        if not passphrase:
            raise ConfigError(f"${passphrase_env} is empty or not set", reason="passphrase")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnencryptedKeyWarning)
        write_private_key(key_path, key, token=TOKEN, passphrase=passphrase)
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    write_public_key(pub_path, key.public_key())
    console.print(f"identity key: {key_path} (mode 0600)\npublic key:   {pub_path}")
    console.print(f"fingerprint:  [bold]{fingerprint(key.public_key())}[/]")


@app.command()
def enroll(
    device_id: Annotated[str, typer.Argument(help="the device's id")],
    public_key: Annotated[Path, typer.Option("--public-key", help="the device's .pub file")],
    key_source: Annotated[str, typer.Option(help="mlkem | qkd | hybrid")] = "mlkem",
    max_examples: Annotated[int | None, typer.Option(
        min=1, help="the most training examples one update may claim (the device's dataset size); "
                    "larger claims are refused")] = None,
    server: Server = DEFAULT_SERVER,
    admin_token: AdminToken = None,
    ca_file: CAFile = None,
) -> None:
    """Enroll a device's public key (operator)."""
    try:
        text = public_key.read_text()
    except OSError as exc:
        raise ConfigError(f"--public-key: cannot read {public_key} ({exc.strerror})") from None
    with OperatorClient(server, resolve_operator_token(admin_token), verify=_verify(ca_file)) as op:
        body: dict[str, object] = {"device_id": device_id, "public_key": text, "key_source": key_source}
        if max_examples is not None:
            body["max_examples"] = max_examples
        rec = op.request("POST", "/v1/admin/devices", body)
    cap = f", at most {rec['max_examples']} examples per update" if rec.get("max_examples") else ""
    console.print(f"enrolled {rec['device_id']} (key {rec['fingerprint']}, key source {rec['key_source']}{cap})")


@app.command()
def token(
    device_id: Annotated[str | None, typer.Option("--device-id", help="bind the token to this device id")] = None,
    ttl: Annotated[float | None, typer.Option(help="seconds until the token expires")] = None,
    key_source: Annotated[str, typer.Option(help="mlkem | qkd | hybrid")] = "mlkem",
    server: Server = DEFAULT_SERVER,
    admin_token: AdminToken = None,
    ca_file: CAFile = None,
) -> None:
    """Issue a one-time, expiring enrollment token (operator); the device uses it with `qflare device join`."""
    with OperatorClient(server, resolve_operator_token(admin_token), verify=_verify(ca_file)) as op:
        out = op.request("POST", "/v1/admin/enrollment-tokens",
                         {"device_id": device_id, "ttl_seconds": ttl, "key_source": key_source})
    console.print(f"token (one use, expires {_when(out['expires_at'])} UTC):")
    print(out["token"])


@app.command()
def join(
    device_id: Annotated[str, typer.Argument(help="the device's id")],
    token_value: Annotated[str, typer.Option("--token", help="the one-time enrollment token")],
    key: Annotated[Path, typer.Option("--key", help="the device's identity key (.key)")],
    passphrase_env: Annotated[str | None, typer.Option(help="env var with the key's passphrase")] = None,
    server: Server = DEFAULT_SERVER,
    ca_file: CAFile = None,
) -> None:
    """Enroll this device with a one-time token (run ON the device; proves possession of the key)."""
    from qflare.crypto import SigningKey
    from qflare.crypto.keyfile import read_private_key, serialize_public_key
    from qflare.crypto.secret_access import TOKEN
    from qflare.edge.client import error_from_response
    from qflare.server.enrollment import sign_enrollment

    passphrase = environment().named(passphrase_env) if passphrase_env else None
    sk = read_private_key(key, token=TOKEN, passphrase=passphrase)
    if not isinstance(sk, SigningKey):
        raise ConfigError(f"{key} is not a signing identity key")
    body = {"device_id": device_id, "public_key": serialize_public_key(sk.public_key()).decode(),
            "token": token_value, "signature": sign_enrollment(sk, device_id, token_value)}
    resp = httpx.post(f"{server}/v1/enroll", json=body, verify=_verify(ca_file), timeout=30)  # type: ignore[arg-type]
    if resp.status_code >= 400:
        raise error_from_response(resp)
    console.print(f"enrolled {device_id} (key {resp.json()['fingerprint']})")


@app.command()
def revoke(
    device_id: Annotated[str, typer.Argument(help="the device's id")],
    server: Server = DEFAULT_SERVER,
    admin_token: AdminToken = None,
    ca_file: CAFile = None,
) -> None:
    """Revoke a device; its next request is refused (operator)."""
    with OperatorClient(server, resolve_operator_token(admin_token), verify=_verify(ca_file)) as op:
        rec = op.request("POST", f"/v1/admin/devices/{device_id}/revoke")
    console.print(f"revoked {rec['device_id']} at {_when(rec['revoked_at'])} UTC")


@app.command("list")
def list_devices(
    server: Server = DEFAULT_SERVER,
    admin_token: AdminToken = None,
    ca_file: CAFile = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List enrolled devices with status and last seen (operator)."""
    with OperatorClient(server, resolve_operator_token(admin_token), verify=_verify(ca_file)) as op:
        devices = op.request("GET", "/v1/admin/devices")
    if json_out:
        print(json.dumps(devices))
        return
    table = Table("device", "status", "key source", "fingerprint", "enrolled (UTC)", "last seen (UTC)", "reason")
    for d in devices:
        style = "red" if d["status"] == "revoked" else "yellow" if d["status"] == "quarantined" else None
        table.add_row(d["device_id"], d["status"], d["key_source"], d["fingerprint"], _when(d["created_at"]),
                      _when(d["last_seen_at"]), d.get("quarantine_reason") or "", style=style)
    console.print(table)


@app.command()
def restore(
    device_id: Annotated[str, typer.Argument(help="the device's id")],
    server: Server = DEFAULT_SERVER,
    admin_token: AdminToken = None,
    ca_file: CAFile = None,
) -> None:
    """Restore a quarantined device: it is selected for rounds again (operator)."""
    with OperatorClient(server, resolve_operator_token(admin_token), verify=_verify(ca_file)) as op:
        rec = op.request("POST", f"/v1/admin/devices/{device_id}/restore")
    console.print(f"restored {rec['device_id']} (status {rec['status']})")


@app.command()
def provision(
    device_ids: Annotated[list[str], typer.Argument(help="one or more device ids")],
    out_dir: Annotated[Path, typer.Option(help="<out-dir>/<id>/ gets the key, the config and the pinned files")]
    = Path("devices"),
    trust_file: Annotated[Path, typer.Option(help="written by `qflare server` at start")] = Path(
        ".qflare/device_trust.yaml"),
    task: Annotated[str, typer.Option(help="digits | traffic | pollution (the server's task)")] = "digits",
    key_source: Annotated[str, typer.Option(help="mlkem | qkd | hybrid")] = "mlkem",
    seed: Annotated[int, typer.Option(help="data partition seed")] = 0,
    wait: Annotated[float, typer.Option(help="seconds to wait for the server to come up")] = 120.0,
    server: Annotated[str | None, typer.Option("--server", envvar="QFLARE_SERVER",
                                               help="server URL (default: the trust file's)")] = None,
    admin_token: AdminToken = None,
    ca_file: CAFile = None,
    force: Annotated[bool, typer.Option(help="replace existing device folders")] = False,
    ledger_key: Annotated[Path | None, typer.Option(
        help="audit the server's ledger under this log key (server-keys/ledger-log.pub), copied to each folder")]
    = None,
    witness_key: Annotated[list[str] | None, typer.Option(
        help="a trusted witness's cosignature verifier key (repeat; qflare witness key)")] = None,
    require_witnesses: Annotated[int, typer.Option(min=0, help="cosignatures each checkpoint needs (k of n)")] = 0,
    kme_url: Annotated[str | None, typer.Option(help="qkd/hybrid: the devices' KME (master SAE side)")] = None,
    kme_pki: Annotated[Path | None, typer.Option(
        help="qkd/hybrid: a `qflare qkd kme pki` folder holding ca.pem and <id>.pem/<id>.key per device, "
             "copied to each folder")] = None,
    qkd_peer_sae: Annotated[str, typer.Option(help="qkd/hybrid: the server's SAE ID")] = "server",
) -> None:
    """Operator: for each device, an identity key, its enrollment and a ready ``device_config.yaml``.

    Each ``<out-dir>/<id>/`` is self-contained (paths in its config are relative to the folder): copy it to
    the device and run ``qflare edge --config <id>/device_config.yaml``. The trust lines (enclave
    measurement, signer and attestation root, or the server key pin) come from the file ``qflare server``
    writes at start, so run this after the server has started; it waits for the server up to ``--wait``.
    """
    import copy
    import shutil
    import time
    import warnings

    import yaml

    from qflare.config import DeviceConfig, dump_yaml, parse_config
    from qflare.crypto import SigningKey
    from qflare.crypto.keyfile import UnencryptedKeyWarning, serialize_public_key, write_private_key, write_public_key
    from qflare.crypto.secret_access import TOKEN
    from qflare.edge.client import ServerUnavailable

    for i, device_id in enumerate(device_ids):
        check_device_id(device_id, option=f"device id #{i + 1}")
        if (out_dir / device_id).exists() and not force:
            raise ConfigError(f"{out_dir / device_id} exists; use --force to replace it", reason="key_exists")
    if key_source != "mlkem":
        if kme_url is None or kme_pki is None:
            raise ConfigError(f"--key-source {key_source} needs --kme-url and --kme-pki", reason="bad_option")
        for device_id in device_ids:
            for name in ("ca.pem", f"{device_id}.pem", f"{device_id}.key"):
                if not (kme_pki / name).is_file():
                    raise ConfigError(f"--kme-pki: {kme_pki / name} does not exist (qflare qkd kme pki {kme_pki} "
                                      f"--sae {device_id} ...)", reason="bad_option")
    if (witness_key or require_witnesses) and ledger_key is None:
        raise ConfigError("--witness-key/--require-witnesses need --ledger-key (the log key the devices pin)",
                          reason="bad_option")
    if ledger_key is not None and not ledger_key.is_file():
        raise ConfigError(f"--ledger-key: {ledger_key} does not exist", reason="bad_option")
    token = resolve_operator_token(admin_token)
    # Wait for the server (it may just have been started in the background), then read what it wrote.
    deadline = time.monotonic() + wait
    while True:
        try:
            trust = yaml.safe_load(trust_file.read_text(encoding="utf-8")) if trust_file.exists() else None
            url = server or (trust or {}).get("server_url")
            if not url:
                raise ServerUnavailable(f"{trust_file} is not written yet (has `qflare server` started?)")
            ca = ca_file or (Path(trust["ca_file"]) if trust and trust.get("ca_file") else None)
            with OperatorClient(url, token, verify=_verify(ca), timeout=10) as op:
                op.request("GET", "/v1/admin/devices")
            break
        except ServerUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            console.print(f"waiting for the server ({exc.message})", markup=False, highlight=False)
            time.sleep(1.0)
    assert trust is not None and url
    with OperatorClient(url, token, verify=_verify(ca)) as op:
        for i, device_id in enumerate(device_ids):
            folder = out_dir / device_id
            folder.mkdir(parents=True, exist_ok=True)
            key = SigningKey.generate()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnencryptedKeyWarning)  # said once below
                write_private_key(folder / f"{device_id}.key", key, token=TOKEN, passphrase=None)
            write_public_key(folder / f"{device_id}.pub", key.public_key())
            rec = op.request("POST", "/v1/admin/devices", {
                "device_id": device_id, "public_key": serialize_public_key(key.public_key()).decode(),
                "key_source": key_source})
            cfg: dict[str, object] = {k: v for k, v in copy.deepcopy(trust).items() if k != "server_url"}
            cfg.update(device_id=device_id, server_url=url, identity_key_file=f"{device_id}.key",
                       key_source=key_source,
                       data={"task": task, "num_partitions": len(device_ids), "partition_index": i, "seed": seed})
            if ca is not None:
                shutil.copyfile(ca, folder / "ca.pem")
                cfg["ca_file"] = "ca.pem"
            if key_source != "mlkem":
                assert kme_pki is not None
                shutil.copyfile(kme_pki / "ca.pem", folder / "kme-ca.pem")
                shutil.copyfile(kme_pki / f"{device_id}.pem", folder / "sae.pem")
                shutil.copyfile(kme_pki / f"{device_id}.key", folder / "sae.key")
                (folder / "sae.key").chmod(0o600)
                cfg["qkd"] = {"kme_url": kme_url, "cert": "sae.pem", "key": "sae.key", "ca": "kme-ca.pem",
                              "peer_sae_id": qkd_peer_sae}
            if ledger_key is not None:
                shutil.copyfile(ledger_key, folder / "ledger-log.pub")
                cfg["ledger"] = {"log_key_file": "ledger-log.pub", "require_witnesses": require_witnesses,
                                 "witness_keys": list(witness_key or [])}
            att = cfg.get("attestation")
            if isinstance(att, dict) and att.get("trust_root_file"):
                root = Path(att["trust_root_file"])
                shutil.copyfile(root, folder / root.name)
                att["trust_root_file"] = root.name
            dump_yaml(parse_config(DeviceConfig, cfg, source=f"{folder}/device_config.yaml"),
                      folder / "device_config.yaml")
            console.print(f"{device_id}: enrolled (key {rec['fingerprint']}); {folder / 'device_config.yaml'}")
    console.print(f"[yellow]warning:[/] the keys in {out_dir} are not encrypted (mode 0600): move each folder to "
                  "its device and delete it here")
