"""The deployment helpers that need no running Flower process."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_ssh_private_key,
)

from fedrec_flwr.ops.certs import make_certificates, make_supernode_keys
from fedrec_flwr.ops.deploy import down, node_config, up


def test_node_config_names_the_partition_and_fills_templates():
    assert node_config(1, 3) == "partition-id=1 num-partitions=3"
    assert node_config(2, 3, "data-file='/d/org{partition-id}-of-{num-partitions}.csv'") == (
        "partition-id=2 num-partitions=3 data-file='/d/org2-of-3.csv'"
    )


def test_up_rejects_zero_supernodes(tmp_path):
    with pytest.raises(ValueError, match=r"--supernodes=0: must be >= 1"):
        up(0, state_dir=tmp_path)


def test_down_without_a_deployment_says_how_to_start_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"deploy.json: no deployment state here"):
        down(tmp_path)


def test_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path):
    paths = make_certificates(tmp_path, ["link.example.org", "10.0.0.7"])
    ca = x509.load_pem_x509_certificate(paths["ca-cert"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server-cert"].read_bytes())
    server.verify_directly_issued_by(ca)  # raises if not
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["link.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    key = load_pem_private_key(paths["server-key"].read_bytes(), password=None)
    assert key.public_key() == server.public_key()
    assert paths["server-key"].stat().st_mode & 0o077 == 0  # private keys: owner only


def test_certificates_need_a_host(tmp_path):
    with pytest.raises(ValueError, match="at least one name or IP"):
        make_certificates(tmp_path, [])


def test_supernode_keys_are_openssh_p384_pairs(tmp_path):
    # Flower's SuperNode loads the private key with load_ssh_private_key and
    # requires an elliptic-curve key; `flwr supernode register` reads the .pub.
    (path,) = make_supernode_keys(tmp_path, 1)
    key = load_ssh_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    assert (tmp_path / "supernode-0.pub").read_bytes() == public + b"\n"
