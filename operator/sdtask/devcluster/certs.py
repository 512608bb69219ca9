"""Certificates for the local control plane: a CA, the API server's serving cert, an admin client cert, the SA key."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

_VALIDITY = dt.timedelta(days=7)


KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"


@dataclass(frozen=True)
class ClusterCertificates:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    kubelet_client_cert: Path  # the API server's identity towards kubelets (logs, exec), bound by RBAC
    kubelet_client_key: Path
    service_account_key: Path  # private, signs tokens
    service_account_pub: Path  # public, verifies them


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def generate(directory: Path) -> ClusterCertificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("sdtask-local-ca")
    ca = _issue(ca_name, ca_key, ca_name, ca_key, is_ca=True)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
    ]
    serving = _issue(_name("kube-apiserver"), serving_key, ca_name, ca_key, sans=sans, server=True)

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _issue(_name("sdtask-admin", "system:masters"), admin_key, ca_name, ca_key)

    kubelet_client_key = ec.generate_private_key(ec.SECP256R1())
    kubelet_client = _issue(_name(KUBELET_CLIENT_USER), kubelet_client_key, ca_name, ca_key)

    # Service-account tokens need an RSA (or ECDSA) key pair; RSA is what every component accepts.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    paths = ClusterCertificates(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        kubelet_client_cert=directory / "apiserver-kubelet-client.crt",
        kubelet_client_key=directory / "apiserver-kubelet-client.key",
        service_account_key=directory / "sa.key",
        service_account_pub=directory / "sa.pub",
    )
    paths.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.ca_key.write_bytes(_pem_key(ca_key))
    paths.serving_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    paths.serving_key.write_bytes(_pem_key(serving_key))
    paths.admin_cert.write_bytes(admin.public_bytes(serialization.Encoding.PEM))
    paths.admin_key.write_bytes(_pem_key(admin_key))
    paths.kubelet_client_cert.write_bytes(kubelet_client.public_bytes(serialization.Encoding.PEM))
    paths.kubelet_client_key.write_bytes(_pem_key(kubelet_client_key))
    paths.service_account_key.write_bytes(_pem_key(sa_key))
    paths.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for private in (
        paths.ca_key,
        paths.serving_key,
        paths.admin_key,
        paths.kubelet_client_key,
        paths.service_account_key,
    ):
        private.chmod(0o600)
    return paths
