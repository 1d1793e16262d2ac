"""The controller's check of a host's certificate (plugins/filter/redis_tls.py): a certificate that is still the one
the role would issue skips community.crypto's steps; any difference, or any doubt, sends the run through them."""

from __future__ import annotations

import ipaddress
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins/filter"))

from redis_host import redis_tls_subject_alt_names  # noqa: E402
from redis_tls import redis_tls_certificate_current, redis_tls_certificate_end  # noqa: E402

NOW = datetime(2026, 12, 6, tzinfo=UTC)
NAMES = redis_tls_subject_alt_names(["redis-1", "localhost", "127.0.0.1", "::1", "10.0.0.5"])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(tmp_path, name="ca"):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"redis-infra CA ({name})")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _host(tmp_path, ca, *, cn="redis-1", names=NAMES, days=365, usages=None, key=None, key_usage_critical=True):
    ca_cert, ca_key = ca
    host_key = key or ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "host.key").write_bytes(_pem_key(host_key))
    alt = [x509.IPAddress(ipaddress.ip_address(n[3:])) if n.startswith("IP:") else x509.DNSName(n[4:]) for n in names]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(host_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages or [ExtendedKeyUsageOID.SERVER_AUTH,
                                                           ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False),
                           critical=key_usage_critical)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "host.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, host_key


def current(tmp_path, names=NAMES, renew_days=30, ca="ca.crt"):
    return redis_tls_certificate_current(tmp_path / "host.crt", tmp_path / "host.key", tmp_path / ca, "redis-1",
                                         names, renew_days, now=NOW)


def test_a_certificate_the_role_would_issue_again_is_current(tmp_path):
    ca = _ca(tmp_path)
    cert, _ = _host(tmp_path, ca)
    assert current(tmp_path)
    # In any order of the names; and its end, as community.crypto's x509_certificate_info gives it.
    assert current(tmp_path, names=list(reversed(NAMES)))
    end = redis_tls_certificate_end((tmp_path / "host.crt").read_text())
    ends = (NOW + timedelta(days=365)).strftime("%Y%m%d%H%M%SZ")
    assert end == {"serial_number": cert.serial_number, "not_after": ends}
    # A provided chain with text before the first certificate (bag attributes, non-ASCII).
    chain = ("Bag Attributes\n    friendlyName: Sérvér\n" + (tmp_path / "host.crt").read_text()
             + (tmp_path / "ca.crt").read_text())
    assert redis_tls_certificate_end(chain) == end


def test_every_difference_or_doubt_sends_the_run_through_the_issuing_steps(tmp_path):
    ca = _ca(tmp_path)
    _host(tmp_path, ca)
    assert not current(tmp_path, names=[*NAMES, "DNS:redis-1.example"]), "a new name"
    assert not current(tmp_path, names=NAMES[:-1]), "a name less"
    assert not current(tmp_path, renew_days=400), "ends within the renewal window"
    _ca(tmp_path, "other")
    assert not current(tmp_path, ca="other.crt"), "another CA"
    cert, key = _host(tmp_path, ca)
    (tmp_path / "host.key").write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    assert not current(tmp_path), "the host's key is another"
    _host(tmp_path, ca, cn="redis-2")
    assert not current(tmp_path), "another common name"
    _host(tmp_path, ca, usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert not current(tmp_path), "not a client certificate"
    _host(tmp_path, ca, key_usage_critical=False)
    assert not current(tmp_path), "key usage not critical"
    (tmp_path / "host.crt").write_text("not a certificate\n")
    assert not current(tmp_path), "unreadable"
    (tmp_path / "host.crt").unlink()
    assert not current(tmp_path), "missing"
