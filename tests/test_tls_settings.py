"""TLS and request headers as settings: the command lines, Envoy's listeners and the Kubernetes
manifests. (TLS on the wire, through the real Envoy, is in test_transport_tls.py.)"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from flowerdemo.options import add_client_arguments, options_from_args, validate_options
from flowerdemo.serving import cli as serve_cli
from flowerdemo.serving.deploy import K8S_TLS_SECRET, kubernetes_documents
from flowerdemo.serving.envoy import EnvoyConfigError, EnvoySettings, build_config
from flowerdemo.serving.plan import DeploymentPlan, make_instances

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _client(*argv: str):
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)))


def test_headers_and_certificates_reach_the_engine_settings(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    options = _client(
        "--url", "https://example.org:443", "--root-certificates", str(ca),
        "-H", "Authorization: Bearer abc:def", "--header", "x-team:  blue ",
    )  # fmt: skip
    assert validate_options(options) == []
    settings = options.engine_settings("https://example.org:443")
    assert settings.tls is not None and settings.tls.root_certificates == ca
    assert settings.headers == (("Authorization", "Bearer abc:def"), ("x-team", "blue"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "h:1", "-H", "no colon here"], "write a header as 'Name: value'"),
        (["--url", "h:1", "-H", "grpc-timeout: 1S"], "set by the protocol itself"),
        (["--url", "http://h:1", "--ssl"], "asks for a plain connection but TLS options"),
        (["--ssl"], "TLS options need --url https://"),
        (["--url", "h:1", "--root-certificates", "/no/such.pem"], "is not a readable file"),
        (["--url", "h:1", "--ssl", "--private-key", __file__], "needs both --private-key"),
    ],
)
def test_tls_and_header_mistakes_are_named(argv, message):
    problems = validate_options(_client(*argv))
    assert any(message in problem for problem in problems), problems


def test_an_https_url_alone_means_tls():
    options = _client("--url", "https://h:1")
    assert options.tls is None  # nothing asked on the command line...
    assert validate_options(options) == []  # ...and the engine takes TLS from the scheme


def test_envoy_listeners_terminate_tls_with_alpn_for_grpc():
    settings = EnvoySettings(
        grpc_upstreams=("127.0.0.1:8001",),
        http_upstreams=("127.0.0.1:8000",),
        tls_certificate="/certs/tls.crt",
        tls_private_key="/certs/tls.key",
    )
    listeners = {
        item["name"]: item for item in build_config(settings)["static_resources"]["listeners"]
    }
    for name, alpn in (("grpc", ["h2"]), ("http", ["h2", "http/1.1"])):
        socket = listeners[name]["filter_chains"][0]["transport_socket"]
        context = socket["typed_config"]["common_tls_context"]
        assert context["tls_certificates"] == [
            {
                "certificate_chain": {"filename": "/certs/tls.crt"},
                "private_key": {"filename": "/certs/tls.key"},
            }
        ]
        assert context["alpn_protocols"] == alpn
    plain = build_config(EnvoySettings(grpc_upstreams=("127.0.0.1:8001",), http_listen=None))
    assert "transport_socket" not in plain["static_resources"]["listeners"][0]["filter_chains"][0]
    with pytest.raises(EnvoyConfigError, match="both a certificate and its private key"):
        build_config(EnvoySettings(grpc_upstreams=("a:1",), http_listen=None, tls_certificate="c"))


def _envoy_pod(tls: bool):
    plan = DeploymentPlan(
        model_name="flowers",
        repository=Path("repository-onnx"),
        envoy_config=Path("envoy.yaml"),
        instances=make_instances(2, ("cpu",)),
        repository_flavour="onnx",
    )
    documents = kubernetes_documents(plan, tls=tls)
    config_text = documents["envoy-configmap.yaml"][0]["data"]["envoy.yaml"]
    pod = documents["envoy-deployment.yaml"][0]["spec"]["template"]["spec"]
    return config_text, pod


def test_kubernetes_keeps_envoy_admin_in_the_pod_and_mounts_the_tls_secret():
    config_text, pod = _envoy_pod(tls=True)
    assert 'address: "127.0.0.1"' in config_text.split("static_resources")[0]
    assert "/etc/envoy/tls/tls.crt" in config_text and "envoy.transport_sockets.tls" in config_text
    (container,) = pod["containers"]
    assert "admin" not in {port["name"] for port in container["ports"]}
    assert "httpGet" not in container["readinessProbe"]
    assert {"name": "tls", "secret": {"secretName": K8S_TLS_SECRET}} in pod["volumes"]
    plain_text, plain_pod = _envoy_pod(tls=False)
    assert "transport_socket" not in plain_text
    assert [volume["name"] for volume in plain_pod["volumes"]] == ["config"]


def _serve(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    serve_cli.add_serve_arguments(parser)
    err = io.StringIO()
    code = serve_cli.run_serve(parser.parse_args(list(argv)), out=io.StringIO(), err=err)
    return code, err.getvalue()


def test_serve_refuses_half_or_unreadable_tls_before_starting(tmp_path: Path):
    cert = tmp_path / "cert.pem"
    cert.write_text(PEM)
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("hello")
    assert _serve("--tls-cert", str(cert)) == (
        2,
        "flowerdemo serve: TLS needs both --tls-cert and --tls-key\n",
    )
    code, message = _serve("--tls-cert", str(cert), "--tls-key", str(not_pem))
    assert code == 2 and "not a PEM file" in message
    code, message = _serve("--tls-cert", str(cert), "--tls-key", str(tmp_path / "none"))
    assert code == 2 and "cannot read it" in message
    code, message = _serve("--tls-cert", str(cert), "--tls-key", str(cert), "--no-envoy")
    assert code == 2 and "--no-envoy" in message


def test_bench_refuses_tls_without_a_server_address(capsys):
    from flowerdemo.__main__ import main as flowerdemo_main

    code = flowerdemo_main(["bench", "--ssl"])
    assert code == 2
    assert "TLS options need --url https://" in capsys.readouterr().err


def test_kubernetes_files_say_how_to_create_the_tls_secret(tmp_path: Path):
    from flowerdemo.serving.deploy import write_compose, write_kubernetes

    plan = DeploymentPlan(
        model_name="flowers",
        repository=Path("repository-onnx"),
        envoy_config=Path("envoy.yaml"),
        instances=make_instances(1, ("cpu",)),
        repository_flavour="onnx",
    )
    write_kubernetes(tmp_path / "k8s", plan, tls=True)
    text = (tmp_path / "k8s" / "kustomization.yaml").read_text()
    assert f"kubectl create secret tls {K8S_TLS_SECRET}" in text
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    write_compose(tmp_path / "compose", plan, tls_files=(cert, key))
    compose = (tmp_path / "compose" / "compose.yaml").read_text()
    assert f"{cert}:/etc/envoy/tls/tls.crt:ro" in compose
    assert (
        "envoy.transport_sockets.tls" in (tmp_path / "compose" / "envoy-compose.yaml").read_text()
    )
