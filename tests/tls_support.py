"""Throwaway TLS material for the end-to-end TLS tests: a CA and one certificate, in tmp_path.

Made with openssl (the `cryptography` package is not a dependency). Nothing here is committed:
every file is written under the test's own temporary folder.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from distributed.security import Security

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA that signed ``cert``, and ``cert`` with its private ``key``."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(folder: Path, ca: str = "ca.crt", cert: str = "tls.crt",
                      key: str = "tls.key") -> Certificates:  # fmt: skip
    """A one-day CA and a certificate for 127.0.0.1/localhost (server and client use), named
    ``ca``, ``cert`` and ``key`` in ``folder``; the CA's own key and the CSR go to a subfolder."""
    if shutil.which("openssl") is None:
        subprocess.run([str(REPO / "scripts" / "ensure-apt.sh"), "openssl"], check=True)
    folder.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f".{folder.name}-ca"
    work.mkdir(exist_ok=True)
    ca_key, csr, extensions = work / "ca.key", work / "tls.csr", work / "tls.ext"
    files = Certificates(folder / ca, folder / cert, folder / key)

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"openssl {args[0]} failed:\n{result.stderr[-2000:]}"

    new_key = ("-newkey", "rsa:2048", "-nodes")
    openssl("req", "-x509", *new_key, "-days", "1", "-subj", "/CN=dask-deploy test CA",
            "-keyout", str(ca_key), "-out", str(files.ca))  # fmt: skip
    openssl("req", *new_key, "-subj", "/CN=127.0.0.1", "-keyout", str(files.key),
            "-out", str(csr))  # fmt: skip
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl("x509", "-req", "-in", str(csr), "-CA", str(files.ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "1", "-extfile", str(extensions),
            "-out", str(files.cert))  # fmt: skip
    return files


def client_security(certificates: Certificates) -> Security:
    """What a user's Client needs for a tls:// scheduler: the CA and its own certificate."""
    return Security(
        tls_ca_file=str(certificates.ca),
        tls_client_cert=str(certificates.cert),
        tls_client_key=str(certificates.key),
        require_encryption=True,
    )


class TrustOnly(Security):  # type: ignore[misc]
    """A Client that trusts the CA but has no certificate of its own (dask's Security cannot
    express that, so the TLS context is built here)."""

    def __init__(self, ca: Path) -> None:
        super().__init__(require_encryption=True)
        self.ca = ca

    def get_connection_args(self, role: str) -> dict[str, object]:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.check_hostname = False
        return {"ssl_context": context, "require_encryption": True, "extra_conn_args": {}}


def refused_without_certificate(port: int, ca_file: Path) -> bool:
    """Does the scheduler refuse a TLS client that trusts its CA but shows no certificate?

    Dask's Security cannot even build such a client, so this one is plain ``ssl``. TLS 1.3
    reports the missing certificate on the first read; an accepted connection would just wait.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"\0" * 8)
                return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
