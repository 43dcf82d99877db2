"""The relay's TCP listener with TLS and mTLS: certificates made by the test (a CA, the relay's
certificate for 127.0.0.1, a client's), real handshakes. Under mTLS a client without a
certificate, or with one another CA signed, is refused; `flowscope status` and `observe` connect
with the --tls-* options."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.flowstream import FlowStream
from collector.observer import serve_observer
from collector.relay import Peer, RelayServer
from collector.tlsconfig import ClientTLS, server_tls
from flowscope.errors import FlowscopeError
from flowscope.flow import IP, TCP, Endpoint, Flow, Verdict
from flowscope.proto import observer_pb2, observer_pb2_grpc
from tests.conftest import free_port
from tests.fakecluster import REPO

T0 = 1_764_366_771_000_000_000


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, *blobs: bytes) -> str:
    path.write_bytes(b"".join(blobs))
    return str(path)


@dataclass(frozen=True)
class Issued:
    cert: str
    key: str


class CA:
    def __init__(self, dir: Path, cn: str) -> None:
        self.dir = dir
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.file = _write(dir / f"{cn}.crt", self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(cn), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Issued(
            _write(self.dir / f"{cn}.crt", cert.public_bytes(serialization.Encoding.PEM)),
            _write(self.dir / f"{cn}.key", key_pem),
        )


@dataclass
class PKI:
    dir: Path
    ca: CA
    relay: Issued
    client: Issued
    stranger: Issued  # a client certificate of another CA


@pytest.fixture(scope="module")
def pki() -> Iterator[PKI]:
    tmp = Path(tempfile.mkdtemp(prefix="h2tls"))
    try:
        ca, other = CA(tmp, "flowscope-ca"), CA(tmp, "other-ca")
        yield PKI(
            tmp,
            ca,
            ca.issue("relay.flowscope.test", server=True),
            ca.issue("observer-client", server=False),
            other.issue("stranger", server=False),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def node(pki: PKI) -> AsyncIterator[Peer]:
    stream = FlowStream(capacity=10, node_name="node-1")
    stream.publish(
        [
            Flow(
                T0,
                Verdict.FORWARDED,
                ip=IP("10.244.1.5", "10.244.2.7"),
                l4=TCP(40000, 80),
                source=Endpoint(identity=300, namespace="x", pod_name="a"),
                node_name="node-1",
                is_reply=False,
            )
        ]
    )
    path = pki.dir / "node-1.sock"
    server = await serve_observer(stream, path)
    try:
        yield Peer("node-1", f"unix:{path}")
    finally:
        await server.close()


async def _status(address: str, tls: ClientTLS | None) -> observer_pb2.ServerStatusResponse:
    creds_channel = (
        grpc.aio.insecure_channel(address)
        if tls is None
        else grpc.aio.secure_channel(address, tls.credentials(), options=tls.channel_options())
    )
    async with creds_channel as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        return await stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)


async def test_mtls_requires_a_client_certificate_of_the_trusted_ca(pki: PKI, node: Peer) -> None:
    tls = server_tls(pki.relay.cert, pki.relay.key, [pki.ca.file])
    assert tls is not None and tls.mutual
    async with RelayServer(lambda: [node], f"127.0.0.1:{free_port()}", tls) as relay:
        good = ClientTLS((pki.ca.file,), pki.client.cert, pki.client.key)
        status = await _status(relay.address, good)
        assert status.num_flows == 1 and status.num_connected_nodes.value == 1
        # the server's name is checked: the certificate names relay.flowscope.test and 127.0.0.1
        named = ClientTLS((pki.ca.file,), pki.client.cert, pki.client.key, "relay.flowscope.test")
        assert (await _status(relay.address, named)).num_flows == 1
        refused = [
            ClientTLS((pki.ca.file,)),  # no client certificate
            ClientTLS((pki.ca.file,), pki.stranger.cert, pki.stranger.key),  # another CA's
        ]
        for tls_client in refused:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await _status(relay.address, tls_client)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError):  # plain text to a TLS port
            await _status(relay.address, None)
        wrong_name = ClientTLS((pki.ca.file,), pki.client.cert, pki.client.key, "elsewhere")
        with pytest.raises(grpc.aio.AioRpcError):
            await _status(relay.address, wrong_name)


async def test_tls_without_client_certificates(pki: PKI, node: Peer) -> None:
    tls = server_tls(pki.relay.cert, pki.relay.key)
    assert tls is not None and not tls.mutual
    async with RelayServer(lambda: [node], f"127.0.0.1:{free_port()}", tls) as relay:
        assert (await _status(relay.address, ClientTLS((pki.ca.file,)))).num_flows == 1
        with pytest.raises(grpc.aio.AioRpcError):  # a client that does not trust the CA
            await _status(relay.address, ClientTLS((pki.client.cert,)))


def test_bad_tls_options_name_the_option(pki: PKI) -> None:
    with pytest.raises(FlowscopeError, match="--tls-server-key-file is missing"):
        server_tls(pki.relay.cert, None)
    with pytest.raises(FlowscopeError, match="--tls-client-ca-files needs"):
        server_tls(None, None, [pki.ca.file])
    with pytest.raises(FlowscopeError, match="--tls-server-cert-file /nope"):
        server_tls("/nope", pki.relay.key).credentials()  # type: ignore[union-attr]
    with pytest.raises(FlowscopeError, match="--tls-client-key-file is missing"):
        ClientTLS((pki.ca.file,), pki.client.cert).credentials()
    with pytest.raises(FlowscopeError, match=r"--tls-ca-cert-files .* not a PEM"):
        ClientTLS((str(Path(REPO) / "pyproject.toml"),)).credentials()


async def test_status_and_observe_commands_over_mtls(pki: PKI, node: Peer) -> None:
    tls = server_tls(pki.relay.cert, pki.relay.key, [pki.ca.file])
    async with RelayServer(lambda: [node], f"127.0.0.1:{free_port()}", tls) as relay:
        base = [sys.executable, "-m", "flowscope"]
        opts = ["--server", relay.address, "--tls-ca-cert-files", pki.ca.file]
        client = [
            "--tls-client-cert-file",
            pki.client.cert,
            "--tls-client-key-file",
            pki.client.key,
        ]

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*base, *args], capture_output=True, text=True, timeout=30)

        # the relay runs on this test's loop: the commands run in a thread
        out = await asyncio.to_thread(run, "status", *opts, *client)
        assert out.returncode == 0, out.stderr
        assert f"Healthcheck (via {relay.address}): Ok" in out.stdout
        assert "Current/Max Flows: 1/10 (10.00%)" in out.stdout
        assert "Connected Nodes: 1/1" in out.stdout
        out = await asyncio.to_thread(run, "observe", *opts, *client, "-o", "json")
        assert out.returncode == 0, out.stderr
        assert '"pod_name":"a"' in out.stdout
        out = await asyncio.to_thread(run, "observe", *opts)  # no client certificate
        assert out.returncode == 1 and "cannot reach the Observer at" in out.stderr
        assert "hint" in out.stderr and "Traceback" not in out.stderr
