"""The controller's view of a host's certificate, read in the controller's own process (the `cryptography`
library that ansible-core itself requires), so that a run with every certificate in place starts no module
on the controller: tasks/tls.yml of the redis_server role runs community.crypto's steps only when
redis_tls_certificate_current says that the host's certificate needs them."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _certificate(data):
    """The first certificate of PEM bytes, whatever comes before it (a chain's bag attributes, say)."""
    from cryptography import x509

    found = PEM_CERTIFICATE.search(data)
    if not found:
        raise ValueError("no PEM certificate")
    return x509.load_pem_x509_certificate(found.group(0))


def _not_after(cert):
    """The certificate's end, in UTC (not_valid_after_utc from cryptography 42 on)."""
    end = getattr(cert, "not_valid_after_utc", None)
    return end if end is not None else cert.not_valid_after.replace(tzinfo=UTC)


def _load(cert_path, key_path, ca_path):
    from cryptography.hazmat.primitives import serialization

    cert = _certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    ca = _certificate(Path(ca_path).read_bytes())
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
    the host's key, the CA's certificate verifies its signature, its subject is the host's name alone and it
    names exactly subject_alt_names, it serves as a server and a client certificate (digitalSignature, critical),
    and it stays valid for more than renew_days. False when in doubt (a file missing or unreadable, an extension
    missing, a cryptography library too old to tell): the issuing steps then decide, as they always did."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        cert, key, ca = _load(cert_path, key_path, ca_path)
        cert.verify_directly_issued_by(ca)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage)

        def spki(public_key):
            return public_key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)

        now = now or datetime.now(UTC)
        return bool(spki(cert.public_key()) == spki(key.public_key())
                    and cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(common_name))])
                    and _names(cert) == {str(name) for name in subject_alt_names or []}
                    and {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
                    and key_usage.critical and key_usage.value.digital_signature
                    and _not_after(cert) - now > timedelta(days=int(renew_days)))
    except Exception:  # noqa: BLE001 - anything unexpected sends the run through the issuing steps
        return False


def redis_tls_certificate_end(pem):
    """{serial_number, not_after (YYYYmmddHHMMSSZ, UTC)} of the first certificate of a PEM text, in the shape
    community.crypto.x509_certificate_info returns them."""
    cert = _certificate(str(pem).encode("utf-8"))
    return {"serial_number": cert.serial_number, "not_after": _not_after(cert).strftime("%Y%m%d%H%M%SZ")}


class FilterModule:
    def filters(self):
        return {
            "redis_tls_certificate_current": redis_tls_certificate_current,
            "redis_tls_certificate_end": redis_tls_certificate_end,
        }
