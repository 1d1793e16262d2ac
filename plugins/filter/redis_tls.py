"""The controller's view of a host's certificate, read in the controller's own process (the `cryptography`
library that ansible-core itself requires), so that a run with every certificate in place starts no module
on the controller: tasks/tls.yml of the redis_server role runs community.crypto's steps only when
redis_tls_certificate_current says that the host's certificate needs them."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path


def _load(cert_path, key_path, ca_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(Path(ca_path).read_bytes())
    return cert, key, ca


def _names(cert):
    """The certificate's subjectAltName entries as redis_tls_subject_alt_names writes them (DNS:, IP:)."""
    from cryptography import x509

    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {f"DNS:{name.lower()}" for name in extension.get_values_for_type(x509.DNSName)}
    names |= {f"IP:{ipaddress.ip_address(address)}" for address in extension.get_values_for_type(x509.IPAddress)}
    return names


def redis_tls_certificate_current(cert_path, key_path, ca_path, common_name, subject_alt_names, renew_days, now=None):
    """Whether the certificate a host got from the private CA is still the one the role would issue: its key is
    the host's key, the CA's certificate verifies its signature, it names the host (common name) and exactly
    subject_alt_names, it serves as a server and a client certificate, and it stays valid for more than
    renew_days. False when in doubt (a file missing or unreadable, an extension missing): the issuing steps then
    decide, as they always did."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        cert, key, ca = _load(cert_path, key_path, ca_path)
        cert.verify_directly_issued_by(ca)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except Exception:  # noqa: BLE001 - anything unexpected sends the run through the issuing steps
        return False

    def spki(public_key):
        return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    names = [attribute.value for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    now = now or datetime.now(UTC)
    return (spki(cert.public_key()) == spki(key.public_key())
            and names == [str(common_name)]
            and _names(cert) == {str(name) for name in subject_alt_names or []}
            and {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
            and cert.not_valid_after_utc - now > timedelta(days=int(renew_days)))


def redis_tls_certificate_end(pem):
    """{serial_number, not_after (YYYYmmddHHMMSSZ, UTC)} of the first certificate of a PEM text, in the shape
    community.crypto.x509_certificate_info returns them."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(str(pem).encode("ascii"))
    return {"serial_number": cert.serial_number, "not_after": cert.not_valid_after_utc.strftime("%Y%m%d%H%M%SZ")}


class FilterModule:
    def filters(self):
        return {
            "redis_tls_certificate_current": redis_tls_certificate_current,
            "redis_tls_certificate_end": redis_tls_certificate_end,
        }
