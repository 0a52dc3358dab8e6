"""Self-signed TLS certificates and SuperNode keys, for testing a deployment.

``python -m fedrec_flwr.ops.certs DIR --host superlink.example.org --supernode-keys 2``
writes into ``DIR``:

- ``ca.crt``/``ca.key``: a throw-away certificate authority;
- ``server.pem``/``server.key``: the SuperLink's certificate, signed by that CA,
  valid for every ``--host`` (DNS names and IP addresses; default ``127.0.0.1``
  and ``localhost``);
- ``supernode-<i>``/``supernode-<i>.pub``: ECDSA P-384 key pairs in OpenSSH
  format for SuperNode authentication (``flower-supernode
  --auth-supernode-private-key``; ``flwr supernode register <key>.pub``).

For testing only: a production federation gets its certificates from a real CA
and each organisation generates its own SuperNode key, never sharing the
private half. Uses ``cryptography``, which Flower already depends on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["main", "make_certificates", "make_supernode_keys"]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrec-flwr testing"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_certificates(
    out_dir: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 30
) -> dict[str, Path]:
    """Write a CA and a SuperLink server certificate for ``hosts`` into ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Created if missing; existing files are overwritten.
    hosts : sequence of str (default: ("127.0.0.1", "localhost"))
        Names and IP addresses SuperNodes and ``flwr`` use to reach the SuperLink.
    days : int (default: 30)
        Validity.

    Returns
    -------
    dict of str to pathlib.Path
        ``ca-cert``, ``ca-key``, ``server-cert``, ``server-key``.
    """
    if not hosts:
        raise ValueError("hosts: give at least one name or IP address of the SuperLink")
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedrec-flwr test CA"))
        .issuer_name(_name("fedrec-flwr test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca-cert": out_dir / "ca.crt",
        "ca-key": out_dir / "ca.key",
        "server-cert": out_dir / "server.pem",
        "server-key": out_dir / "server.key",
    }
    paths["ca-cert"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["ca-key"], ca_key)
    paths["server-cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["server-key"], server_key)
    return paths


def make_supernode_keys(out_dir: Path, count: int) -> list[Path]:
    """Write ``count`` ECDSA P-384 key pairs (OpenSSH format) for SuperNode auth.

    Returns
    -------
    list of pathlib.Path
        The private key files ``supernode-<i>``; each public key is beside it
        as ``supernode-<i>.pub``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    private = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        path = out_dir / f"supernode-{i}"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        path.with_name(f"{path.name}.pub").write_bytes(public + b"\n")
        private.append(path)
    return private


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m fedrec_flwr.ops.certs",
        description="Self-signed TLS certificates and SuperNode keys (testing only).",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write into")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        help="SuperLink DNS name or IP (repeatable; default: 127.0.0.1 and localhost)",
    )
    parser.add_argument("--days", type=int, default=30, help="validity in days (30)")
    parser.add_argument(
        "--supernode-keys", type=int, default=0, help="SuperNode key pairs to make (0)"
    )
    args = parser.parse_args(argv)
    paths = make_certificates(args.out_dir, args.hosts or ("127.0.0.1", "localhost"), args.days)
    keys = make_supernode_keys(args.out_dir, args.supernode_keys)
    for path in [*paths.values(), *keys]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
