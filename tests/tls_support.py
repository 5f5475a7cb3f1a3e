"""Throwaway TLS material for the end-to-end TLS tests: a CA and one certificate, in tmp_path.

Made with openssl (the `cryptography` package is not a dependency). Nothing here is committed:
every file is written under the test's own temporary folder.
"""

from __future__ import annotations

import operator
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client, Future
from distributed.security import Security

from process_support import wait_for

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


def refused_without_certificate(port: int, ca_file: Path, host: str = "127.0.0.1") -> bool:
    """Does the scheduler refuse a TLS client that trusts its CA but shows no certificate?

    Dask's Security cannot even build such a client, so this one is plain ``ssl``. TLS 1.3
    reports the missing certificate on the first read; an accepted connection would just wait.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"\0" * 8)
                return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def assert_only_certified_clients_get_in(
    address: str, certificates: Certificates, folder: Path
) -> None:
    """The scheduler at ``address`` (tls://<loopback address>:port) refuses every client without a
    certificate its CA signed: plain TCP, a Dask client that trusts the CA but has no
    certificate, a bare TLS socket without one, and a client certified by another CA (made in
    ``folder``)."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    with pytest.raises(OSError):
        Client(f"tcp://{host}:{port}", timeout="5s")
    with pytest.raises(OSError):
        Client(address, security=TrustOnly(certificates.ca), timeout="5s")
    assert refused_without_certificate(int(port), certificates.ca, host)
    stranger = make_certificates(folder / "other-ca")
    with pytest.raises(OSError):
        Client(address, security=client_security(stranger), timeout="5s")


def worker_addresses(client: Client) -> dict[str, str]:
    """Registered workers: name (as text, like the scheduler compares them) -> address."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {str(worker["name"]): address for address, worker in workers.items()}


def burst_scales_up_over_tls(
    client: Client, launched: Callable[[], Collection[str]], logs: Callable[[], str]
) -> tuple[Future, list[Future], dict[str, str]]:
    """With the minimum worker up, hold one result (7 ** 2) and submit a burst of 40
    half-second sleeps; wait until more workers register, each named after an instance the
    backend ``launched`` and each at a tls:// address.

    Returns the held result, the burst (still running) and the workers at that moment."""
    wait_for("the minimum worker registers", lambda: worker_addresses(client), 90, logs)
    held = client.submit(operator.pow, 7, 2)
    assert held.result(timeout=60) == 49
    burst = client.map(time.sleep, [0.5] * 40, pure=False)

    def scaled_up() -> bool:
        workers = worker_addresses(client)
        return len(workers) > 1 and set(workers) <= set(launched())

    wait_for("the scaler launches more workers and they register over TLS", scaled_up, 90, logs)
    peak = worker_addresses(client)
    assert all(address.startswith("tls://") for address in peak.values()), peak
    return held, burst, peak
