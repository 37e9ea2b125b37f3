"""Throwaway keys and certificates for one sandbox run.

A private CA signs the server certificate used by both the HTTPS token endpoint and
SMTP STARTTLS (SANs ``localhost`` and ``127.0.0.1``); clients trust it through
:attr:`SandboxPki.ca_path`. The client certificate is what an app registration's
certificate credential looks like: a self-signed RSA certificate, since MSAL signs
assertions with RS256/PS256.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from airflow_provider_hve.sandbox.files import write_private

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HVE sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def rsa_key() -> rsa.RSAPrivateKey:
    """Make a 2048-bit RSA key, the size Entra accepts for certificates and signing."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class SandboxPki:
    """Keys and certificates, written as PEM files into ``state_dir``."""

    state_dir: Path
    ca_cert: x509.Certificate
    server_cert: x509.Certificate
    server_key: ec.EllipticCurvePrivateKey
    client_cert: x509.Certificate
    client_key: rsa.RSAPrivateKey

    @property
    def ca_path(self) -> Path:
        """Path of the CA certificate clients should trust."""
        return self.state_dir / "ca.pem"

    @property
    def server_cert_path(self) -> Path:
        """Path of the server certificate chain."""
        return self.state_dir / "server.pem"

    @property
    def server_key_path(self) -> Path:
        """Path of the server private key."""
        return self.state_dir / "server-key.pem"

    @property
    def client_cert_path(self) -> Path:
        """Path of the client credential: private key then certificate, as MSAL users keep it."""
        return self.state_dir / "client-certificate.pem"

    @property
    def client_private_key_pem(self) -> str:
        """Return the client certificate's private key as PEM text."""
        return _pem_key(self.client_key).decode()

    @property
    def client_cert_pem(self) -> str:
        """Return the client certificate as PEM text."""
        return _pem_cert(self.client_cert).decode()

    @property
    def client_thumbprint(self) -> str:
        """Return the SHA-1 thumbprint in hex, the form the Entra portal shows."""
        return self.client_cert.fingerprint(hashes.SHA1()).hex().upper()

    def server_ssl_context(self) -> ssl.SSLContext:
        """Build a server-side TLS context (TLS 1.2+, like HVE)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert_path, self.server_key_path)
        return context

    @classmethod
    def create(cls, state_dir: Path) -> SandboxPki:
        """Generate everything and write the PEM files.

        :param state_dir: an existing folder to write into
        """
        now = dt.datetime.now(dt.timezone.utc)
        start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=30)
        # EC keys for the TLS side keep start-up fast; RSA only where Entra needs it.
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("HVE sandbox CA"))
            .issuer_name(_name("HVE sandbox CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(ca_cert.subject)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        client_key = rsa_key()
        client_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("hve-sandbox-app"))
            .issuer_name(_name("hve-sandbox-app"))
            .public_key(client_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .sign(client_key, hashes.SHA256())
        )
        pki = cls(state_dir, ca_cert, server_cert, server_key, client_cert, client_key)
        # Every file 0600 from its first byte (keys are never written first and restricted afterwards).
        write_private(pki.ca_path, _pem_cert(ca_cert))
        write_private(pki.server_cert_path, _pem_cert(server_cert) + _pem_cert(ca_cert))
        write_private(pki.server_key_path, _pem_key(server_key))
        write_private(pki.client_cert_path, _pem_key(client_key) + _pem_cert(client_cert))
        return pki
