"""Make a test PKI for the dispatch broker and the vehicles (Python ``cryptography``).

    .venv/bin/python tools/make_certs.py OUT_DIR --broker-host broker.example.org \\
        --vehicle PV-0421 --vehicle PV-0422 [--dispatch dispatch]

writes ``ca.crt``/``ca.key``, ``broker.crt``/``broker.key`` (for the host and
127.0.0.1/localhost), and ``<vehicle>.crt``/``<vehicle>.key`` per vehicle with
CN = the vehicle id (what the broker's ACL uses as the username). Private
keys are written 0600. For a lab, or to show how the real PKI must look: a
real fleet's CA lives offline, not on a laptop.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "patrol-agent test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_key(path: Path, key: Key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(out: Path, name: str = "ca", cn: str = "patrol-agent test CA") -> tuple[x509.Certificate, Key]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    write_cert(out / f"{name}.crt", cert)
    write_key(out / f"{name}.key", key)
    return cert, key


def issue(out: Path, name: str, cn: str, ca: tuple[x509.Certificate, Key], *, server_hosts: list[str] | None = None,
          expired: bool = False) -> Path:
    """A leaf certificate signed by ``ca``: a server's (with SANs) or a client's (CN = vehicle id)."""
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else (
        now - dt.timedelta(days=1), now + dt.timedelta(days=825))
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server_hosts:
        alt: list[x509.GeneralName] = []
        for host in server_hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_cert(out / f"{name}.crt", cert)
    write_key(out / f"{name}.key", key)
    return out / f"{name}.crt"


def revoke(out: Path, ca: tuple[x509.Certificate, Key], certs: list[Path], name: str = "crl.pem") -> Path:
    """A CRL listing ``certs``: what the broker reloads to refuse new connections of a stolen unit."""
    ca_cert, ca_key = ca
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
               .next_update(now + dt.timedelta(days=7)))
    for path in certs:
        serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    (out / name).write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return out / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--broker-host", action="append", default=[], help="broker DNS name or IP (repeatable)")
    parser.add_argument("--vehicle", action="append", default=[], help="vehicle id (repeatable)")
    parser.add_argument("--dispatch", action="append", default=["dispatch"], help="dispatch client names")
    args = parser.parse_args()
    ca = make_ca(args.out)
    issue(args.out, "broker", (args.broker_host or ["localhost"])[0], ca,
          server_hosts=[*args.broker_host, "localhost", "127.0.0.1"])
    for name in [*args.vehicle, *args.dispatch]:
        issue(args.out, name, name, ca)
    print(f"wrote the CA, the broker's and {len(args.vehicle) + len(args.dispatch)} client certificates to {args.out}")


if __name__ == "__main__":
    main()
