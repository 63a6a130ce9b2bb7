"""``qflare enclave``: measure, quote, verify-quote (the sub-app, through Typer's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qflare.cli.enclave import app
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.measurement import measure
from qflare.errors import AttestationError

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    """A quote bundle from a simulated enclave, and that enclave's work directory."""
    work = tmp_path_factory.mktemp("cli")
    result = runner.invoke(app, ["quote", "--json", "--work-dir", str(work), "--nonce", "11" * 32])
    assert result.exit_code == 0, result.output
    path = work / "quote.json"
    path.write_text(result.output)
    return path, work, json.loads(result.output)


def test_measure_prints_the_measurement_of_the_committed_config() -> None:
    # Execute
    result = runner.invoke(app, ["measure", "--json"])

    # Assert
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["measurement"] == measure(EnclaveConfig()).hex
    assert len(doc["files"]) == len(measure(EnclaveConfig()).files)


def test_quote_bundle_carries_the_nonce_and_the_measurement(bundle: tuple[Path, Path, dict[str, object]]) -> None:
    # Prepare
    _, _, doc = bundle

    # Assert
    assert doc["nonce"] == "11" * 32
    assert doc["measurement"] == measure(EnclaveConfig()).hex
    assert doc["simulated"] is True


def test_verify_quote_accepts_a_simulated_quote_only_when_allowed(
    bundle: tuple[Path, Path, dict[str, object]],
) -> None:
    # Prepare
    path, work, doc = bundle
    base = ["verify-quote", str(path), "--expect-measurement", str(doc["measurement"]),
            "--expect-signer", str(doc["signer"]), "--platform-dir", str(work / "platform")]  # fmt: skip

    # Execute
    allowed = runner.invoke(app, [*base, "--allow-simulated", "--json"])
    refused = runner.invoke(app, base)

    # Assert
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.output)["verified"] is True
    assert isinstance(refused.exception, AttestationError)
    assert refused.exception.reason == "simulated_not_allowed"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--expect-measurement", "00" * 32], "wrong_measurement"),
        (["--nonce", "22" * 32], "stale_nonce"),
        (["--expect-signer", "ab" * 32], "wrong_signer"),
        (["--min-svn", "2"], "svn_too_low"),
    ],
)
def test_verify_quote_refuses_with_the_reason(
    bundle: tuple[Path, Path, dict[str, object]], extra: list[str], reason: str
) -> None:
    # Prepare
    path, work, doc = bundle
    args = ["verify-quote", str(path), "--allow-simulated", "--platform-dir", str(work / "platform"),
            "--expect-measurement", str(doc["measurement"])]  # fmt: skip

    # Execute
    result = runner.invoke(app, [*args, *extra])

    # Assert
    assert isinstance(result.exception, AttestationError)
    assert result.exception.reason == reason


def test_verify_quote_refuses_a_file_that_is_not_a_bundle(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "x.json"
    path.write_text('{"format": "something-else"}')

    # Execute
    result = runner.invoke(app, ["verify-quote", str(path), "--expect-measurement", "00" * 32])

    # Assert
    assert isinstance(result.exception, AttestationError)
    assert result.exception.reason == "malformed_quote"


def test_gramine_manifest_renders_with_given_paths(tmp_path: Path) -> None:
    # Execute
    result = runner.invoke(app, ["gramine-manifest", "--work-dir", str(tmp_path), "--libos", "/g/libsysdb.so",
                                 "--runtimedir", "/g/runtime/glibc"])  # fmt: skip

    # Assert
    assert result.exit_code == 0, result.output
    assert 'loader.entrypoint.uri = "file:/g/libsysdb.so"' in Path(result.output.strip()).read_text()
