"""TLS end to end: Envoy terminates TLS with a self-signed certificate made here, and the engine
connects through it over gRPC and HTTP; a client that does not trust the certificate, or that
speaks plain text to a TLS listener, is told so in one clear sentence."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flowerdemo.core.engine import ConnectError, EngineSettings, InferenceEngine
from flowerdemo.core.images import load_images
from flowerdemo.core.transport import TlsOptions
from flowerdemo.resources import sample_images_dir
from flowerdemo.serving.stack import LocalStack

pytestmark = pytest.mark.stack


def make_self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (openssl, fixed
    arguments)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    server = make_self_signed(folder, "flowerdemo-test")
    stranger = make_self_signed(folder, "someone-else")
    return server, stranger


@pytest.fixture(scope="module")
def tls_stack(stack_settings, certificates):
    (cert, key), _ = certificates
    with LocalStack(stack_settings(1, tls_cert=cert, tls_key=key)) as stack:
        yield stack


@pytest.fixture(scope="module")
def samples():
    return [image.image for image in load_images(sample_images_dir()).images[:3]]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_engine_classifies_through_envoy_over_tls(tls_stack, certificates, samples, protocol):
    (cert, _), _ = certificates
    address = tls_stack.grpc_url if protocol == "grpc" else tls_stack.http_url
    settings = EngineSettings(
        url=f"https://{address}",
        protocol=protocol,
        tls=TlsOptions(root_certificates=cert),
        headers=(("Authorization", "Bearer test-token"),),
    )
    engine = InferenceEngine(settings, samples)
    spec = await engine.connect()
    try:
        events = [await engine.classify([k]) for k in range(len(samples))]
    finally:
        await engine.close()
    assert spec.has_labels
    assert all(event.ok for event in events), [event.error for event in events]
    assert {event.instance for event in events} == {"triton-0"}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_an_untrusted_certificate_is_a_clear_error(
    tls_stack, certificates, samples, protocol
):
    _, (stranger, _) = certificates
    address = tls_stack.grpc_url if protocol == "grpc" else tls_stack.http_url
    settings = EngineSettings(
        url=f"https://{address}",
        protocol=protocol,
        tls=TlsOptions(root_certificates=stranger),
        connect_timeout_s=3.0,
    )
    engine = InferenceEngine(settings, samples)
    with pytest.raises(ConnectError) as error:
        await engine.connect()
    await engine.close()
    print(error.value)
    assert "not trusted" in str(error.value)
    assert "--root-certificates" in str(error.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_plain_text_to_a_tls_listener_is_a_clear_error(tls_stack, samples, protocol):
    address = tls_stack.grpc_url if protocol == "grpc" else tls_stack.http_url
    settings = EngineSettings(url=address, protocol=protocol, connect_timeout_s=3.0)
    engine = InferenceEngine(settings, samples)
    with pytest.raises(ConnectError) as error:
        await engine.connect()
    await engine.close()
    print(error.value)
    assert "If the server expects TLS, write --url https://HOST:PORT" in str(error.value)


def test_the_command_line_names_the_problem_without_a_traceback(tls_stack, certificates):
    _, (stranger, _) = certificates
    result = subprocess.run(
        [
            sys.executable, "-m", "flowerdemo", "--headless", "--mode", "auto",
            "--duration", "1", "--url", f"https://{tls_stack.grpc_url}",
            "--root-certificates", str(stranger),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "not trusted" in result.stderr


def test_bench_measures_through_tls(tls_stack, certificates, tmp_path):
    (cert, _), _ = certificates
    result = subprocess.run(
        [
            sys.executable, "-m", "flowerdemo", "bench", "--url", f"https://{tls_stack.grpc_url}",
            "--root-certificates", str(cert), "-H", "x-booth: 7", "--concurrency-range", "2",
            "--window", "0.5", "--max-windows", "3", "--output-dir", str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert any(tmp_path.glob("*.csv"))
