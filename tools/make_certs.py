"""A test PKI for the dispatch broker, the vehicles and dispatch's programs (Python ``cryptography``).

    tools/make_certs.py init DIR --broker-host broker.example.org --vehicle PV-0421 --vehicle PV-0422
    tools/make_certs.py issue DIR PV-0423          # one more client certificate (a vehicle or dispatch)
    tools/make_certs.py revoke DIR PV-0421         # add its certificate to the CRL (DIR/crl.pem)
    tools/make_certs.py crl DIR                    # renew the CRL: same entries, a new lifetime
    tools/make_certs.py show DIR                   # what the CRL lists, and until when it is valid

``init`` writes ``ca.crt``/``ca.key``, ``broker.crt``/``broker.key`` (for the
broker hosts, localhost and 127.0.0.1), one ``<name>.crt``/``<name>.key`` per
vehicle and per dispatch identity (CN = the name: the broker's user name, ACL
key and client id), and an empty ``crl.pem``: the reference broker config does
not start without a CRL. Private keys are written 0600.

The CRL is valid for ``--crl-days`` (default 365). Once its nextUpdate has
passed, OpenSSL (hence mosquitto) refuses EVERY client certificate: renew it
with ``crl`` well before (``show`` prints the date). For a lab, or to show how
the real PKI must look: a real fleet's CA lives offline, not on a laptop.
Runs as a command line tool; nothing here is imported by the agent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey
CA = tuple[x509.Certificate, Key]

#: dispatch identities that the reference ACL (config/mosquitto/acl) knows: one per program
#: connected at the same time (the broker uses the CN as the client id)
DISPATCH = ("dispatch", "dispatch-watch", "dispatch-tool")
CRL_DAYS = 365
CERT_DAYS = 825


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


def make_ca(out: Path, name: str = "ca", cn: str = "patrol-agent test CA") -> CA:
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


def load_ca(out: Path, name: str = "ca") -> CA:
    cert = x509.load_pem_x509_certificate((out / f"{name}.crt").read_bytes())
    key = serialization.load_pem_private_key((out / f"{name}.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"{out / name}.key: not an EC key made by this tool")
    return cert, key


def issue(out: Path, name: str, cn: str, ca: CA, *, server_hosts: list[str] | None = None,
          expired: bool = False, days: int = CERT_DAYS) -> Path:
    """A leaf certificate signed by ``ca``: a server's (with SANs) or a client's (CN = vehicle id)."""
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else (
        now - dt.timedelta(days=1), now + dt.timedelta(days=days))
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


def revoked(out: Path, name: str = "crl.pem") -> dict[int, dt.datetime]:
    """What the CRL in ``out`` lists so far: serial -> revocation date (nothing if there is none yet)."""
    path = out / name
    if not path.exists():
        return {}
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


def write_crl(out: Path, ca: CA, entries: dict[int, dt.datetime], *, name: str = "crl.pem",
              days: float = CRL_DAYS, now: dt.datetime | None = None) -> Path:
    ca_cert, ca_key = ca
    now = now or dt.datetime.now(dt.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
               .next_update(now + dt.timedelta(days=days)))
    for serial, when in sorted(entries.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    tmp = out / f".{name}.tmp"
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.chmod(0o644)
    tmp.replace(out / name)  # the broker never reads half a CRL
    return out / name


def revoke(out: Path, ca: CA, certs: list[Path], name: str = "crl.pem", days: float = CRL_DAYS) -> Path:
    """Add ``certs`` to the CRL in ``out`` (keeping what it listed): what the broker reads to refuse
    new connections of a stolen unit. With no certs: a fresh CRL with the same entries (renewal)."""
    entries = revoked(out, name)
    now = dt.datetime.now(dt.UTC)
    for path in certs:
        serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        entries.setdefault(serial, now)
    return write_crl(out, ca, entries, name=name, days=days, now=now)


def _cert_path(out: Path, what: str) -> Path:
    path = Path(what) if what.endswith((".crt", ".pem")) else out / f"{what}.crt"
    if not path.is_file():
        raise SystemExit(f"make_certs: no certificate {path} (give a name issued in {out} or a .crt file)")
    return path


def _show(out: Path) -> None:
    crl = x509.load_pem_x509_crl((out / "crl.pem").read_bytes())
    names = {}
    for cert_path in sorted(out.glob("*.crt")):
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names[cert.serial_number] = cert_path.stem
    left = crl.next_update_utc - dt.datetime.now(dt.UTC) if crl.next_update_utc else None
    print(f"{out / 'crl.pem'}: {len(crl)} revoked, valid until {crl.next_update_utc:%Y-%m-%d %H:%M} UTC"
          + (f" ({left.days} days left)" if left is not None and left.total_seconds() > 0 else " (EXPIRED)"))
    for entry in crl:
        print(f"  {names.get(entry.serial_number, '?'):<20} serial {entry.serial_number:x}, "
              f"revoked {entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="make_certs.py", description=(__doc__ or "").split("\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    crl_days = {"type": float, "default": CRL_DAYS, "help": f"CRL lifetime in days (default {CRL_DAYS})"}
    init = sub.add_parser("init", help="a new CA, the broker's certificate, clients and an empty CRL")
    init.add_argument("out", type=Path, help="directory to write (created)")
    init.add_argument("--broker-host", action="append", default=[], help="broker DNS name or IP (repeatable)")
    init.add_argument("--vehicle", action="append", default=[], help="vehicle id (repeatable)")
    init.add_argument("--dispatch", action="append", default=None,
                      help=f"dispatch identity, one per program connected at once (repeatable; default "
                           f"{', '.join(DISPATCH)}, the names the reference ACL knows)")
    init.add_argument("--crl-days", **crl_days)  # type: ignore[arg-type]
    init.add_argument("--force", action="store_true", help="replace an existing CA in OUT")
    one = sub.add_parser("issue", help="one more client certificate signed by OUT/ca.key (CN = NAME)")
    one.add_argument("out", type=Path)
    one.add_argument("name", help="vehicle id or dispatch identity")
    one.add_argument("--days", type=int, default=CERT_DAYS, help=f"validity (default {CERT_DAYS})")
    rev = sub.add_parser("revoke", help="add certificates to OUT/crl.pem (names issued in OUT, or .crt files)")
    rev.add_argument("out", type=Path)
    rev.add_argument("names", nargs="+")
    rev.add_argument("--crl-days", **crl_days)  # type: ignore[arg-type]
    renew = sub.add_parser("crl", help="renew OUT/crl.pem: the same entries, valid from now for --crl-days")
    renew.add_argument("out", type=Path)
    renew.add_argument("--crl-days", **crl_days)  # type: ignore[arg-type]
    show = sub.add_parser("show", help="what OUT/crl.pem lists and until when it is valid")
    show.add_argument("out", type=Path)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out: Path = args.out
    if args.command == "init":
        if (out / "ca.key").exists() and not args.force:
            raise SystemExit(f"make_certs: {out / 'ca.key'} exists: use `issue` to add clients, or --force")
        ca = make_ca(out)
        issue(out, "broker", (args.broker_host or ["localhost"])[0], ca,
              server_hosts=[*args.broker_host, "localhost", "127.0.0.1"])
        dispatch = list(DISPATCH) if args.dispatch is None else args.dispatch
        for name in [*args.vehicle, *dispatch]:
            issue(out, name, name, ca)
        write_crl(out, ca, {}, days=args.crl_days)
        print(f"wrote the CA, the broker's, {len(args.vehicle)} vehicle and {len(dispatch)} dispatch "
              f"certificates and an empty CRL (valid {args.crl_days:g} days) to {out}")
        extra = sorted(set(dispatch) - set(DISPATCH))
        if extra:
            print(f"add a `user` block to the broker's acl for: {', '.join(extra)}", file=sys.stderr)
    elif args.command == "issue":
        issue(out, args.name, args.name, load_ca(out), days=args.days)
        print(f"wrote {out / args.name}.crt and .key (CN={args.name})")
    elif args.command == "revoke":
        paths = [_cert_path(out, name) for name in args.names]
        path = revoke(out, load_ca(out), paths, days=args.crl_days)
        print(f"wrote {path}: {len(revoked(out))} revoked; install it on the broker and restart it (README.md)")
    elif args.command == "crl":
        path = revoke(out, load_ca(out), [], days=args.crl_days)
        print(f"wrote {path}: {len(revoked(out))} revoked, valid {args.crl_days:g} days; install it on the broker "
              "and reload it (README.md)")
    else:
        _show(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
