"""TLS for the Observer API's TCP listeners and their clients, as Hubble configures them.

Server (the relay's listener, like hubble-relay's --tls-server-cert-file/--tls-server-key-file and
--tls-client-ca-files): a certificate and key; with client CAs, every client must show a
certificate one of them signed (mTLS), else the handshake fails.
Client (`observe`/`status` --tls, --tls-ca-cert-files, --tls-client-cert-file,
--tls-client-key-file, --tls-server-name): the CAs to trust (default: the system's), an optional
client certificate and key for mTLS, and the name to expect in the server's certificate.

Files are read when the credentials are made; a missing or unreadable file is a FlowscopeError
naming the option it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from flowscope.errors import FlowscopeError


def _read(path: str | Path, option: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FlowscopeError(
            f"{option} {path}: cannot read it ({exc.strerror or exc})",
            hint=f"give {option} a PEM file that exists and is readable",
        ) from None
    if b"-----BEGIN" not in data:
        raise FlowscopeError(
            f"{option} {path}: not a PEM file", hint=f"give {option} a PEM-encoded file"
        )
    return data


def _read_all(paths: Sequence[str | Path], option: str) -> bytes | None:
    return b"".join(_read(p, option) for p in paths) if paths else None


@dataclass(frozen=True)
class ServerTLS:
    """A TCP listener's TLS: its certificate chain and key, and the CAs clients must be signed
    by (none: clients need no certificate)."""

    cert_file: str
    key_file: str
    client_ca_files: tuple[str, ...] = ()

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca_files)

    def credentials(self) -> grpc.ServerCredentials:
        cert = _read(self.cert_file, "--tls-server-cert-file")
        key = _read(self.key_file, "--tls-server-key-file")
        cas = _read_all(self.client_ca_files, "--tls-client-ca-files")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=cas, require_client_auth=cas is not None
        )


def server_tls(
    cert_file: str | None, key_file: str | None, client_ca_files: Sequence[str] = ()
) -> ServerTLS | None:
    """The listener's TLS from its options (None: plain text); FlowscopeError when they do not
    fit together."""
    if not cert_file and not key_file:
        if client_ca_files:
            raise FlowscopeError(
                "--tls-client-ca-files needs --tls-server-cert-file and --tls-server-key-file",
                hint="mTLS is TLS with client certificates: give the server its certificate too",
            )
        return None
    if not (cert_file and key_file):
        missing = "--tls-server-key-file" if cert_file else "--tls-server-cert-file"
        raise FlowscopeError(
            f"{missing} is missing", hint="TLS needs both the certificate and its key"
        )
    return ServerTLS(cert_file, key_file, tuple(client_ca_files))


@dataclass(frozen=True)
class ClientTLS:
    """What a client trusts and shows: CAs (empty: the system's), its own certificate and key
    (for servers that require one), and the server name to verify (default: the host)."""

    ca_files: tuple[str, ...] = ()
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        cas = _read_all(self.ca_files, "--tls-ca-cert-files")
        cert = key = None
        if self.cert_file or self.key_file:
            if not (self.cert_file and self.key_file):
                missing = "--tls-client-key-file" if self.cert_file else "--tls-client-cert-file"
                raise FlowscopeError(
                    f"{missing} is missing",
                    hint="a client certificate needs its key, and the other way round",
                )
            cert = _read(self.cert_file, "--tls-client-cert-file")
            key = _read(self.key_file, "--tls-client-key-file")
        return grpc.ssl_channel_credentials(cas, key, cert)

    def channel_options(self) -> list[tuple[str, str]]:
        if not self.server_name:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]
