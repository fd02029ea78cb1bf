"""Client certificates as principals (mutual TLS on the gRPC port).

The TLS handshake already verified the certificate against `client_ca_file`;
here it only names the caller: the subject's common name (or its first URI or
DNS subject alternative name, e.g. a SPIFFE id), with the subject's
organizational units as groups.
"""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.x509.oid import NameOID

from quiver.errors import UnauthenticatedError
from quiver_server.auth.principal import Principal


@functools.lru_cache(maxsize=1024)
def certificate_principal(pem: bytes, source: str = "common_name") -> Principal:
    """The principal a verified client certificate names.

    Raises:
        UnauthenticatedError: the certificate carries no such name.
    """
    certificate = x509.load_pem_x509_certificate(pem)
    subject = certificate.subject
    groups = frozenset(
        str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    )
    name: str | None = None
    if source == "common_name":
        names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else None
    else:
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        if san is not None:
            kind = x509.UniformResourceIdentifier if source == "uri_san" else x509.DNSName
            values = san.get_values_for_type(kind)
            name = values[0] if values else None
    if not name:
        raise UnauthenticatedError(
            f"the client certificate has no {source.replace('_', ' ')} to name the principal",
            reason="CERTIFICATE_NAME",
        )
    return Principal(name, groups, "mtls")
