"""The certificate chain that signs Content Credentials: made once under the data directory, or the operator's own.

Why a CA and not one self-signed certificate: c2pa refuses a bare self-signed leaf ("the certificate is invalid").
What it accepts is an EC P-256 CA (basicConstraints CA, keyCertSign) and an end-entity certificate the CA issued,
with keyUsage digitalSignature (critical), extendedKeyUsage emailProtection and subject/authority key identifiers.
The CA certificate doubles as this server's trust anchor: files signed by a chain ending in it verify as "trusted".

Private keys stay in files of mode 0600 (directory 0700) and are read only when a signer is made; they never go into
a log line, an error message or a repr. An operator may instead bring a certificate from a C2PA-trusted CA
(`BANDMATE_C2PA_CERT` / `BANDMATE_C2PA_KEY`, passed in as paths: this module never reads the environment).
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from generation.atomic import write_atomic

log = logging.getLogger(__name__)

KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SIGNER_CERT_FILE = "signer.pem"  # the end-entity certificate, then the CA: the chain c2pa embeds
SIGNER_KEY_FILE = "signer.key"

CA_VALIDITY = datetime.timedelta(days=20 * 365)
SIGNER_VALIDITY = datetime.timedelta(days=2 * 365)
# The end-entity certificate is re-issued (same CA, so old files stay trusted) this long before it expires.
RENEW_BEFORE = datetime.timedelta(days=30)
# Clock skew allowance: a certificate made now is valid from a little before now.
BACKDATE = datetime.timedelta(hours=1)


class SigningKeyError(ValueError):
    """The signing chain cannot be made or used; the message says what to do and never holds key material."""


@dataclass(frozen=True)
class SigningChain:
    """Where the signer's key lives and the public half of its chain. Holds no private key bytes."""

    chain_pem: bytes  # end-entity certificate first, then its issuers
    key_path: Path = field(repr=False)
    trust_anchor_pem: bytes  # the CA certificate(s) whose signatures count as this server's own
    algorithm: str  # c2pa's name: es256, es384, es512, ps256, ed25519
    signer_name: str  # the end-entity certificate's common name
    not_after: datetime.datetime

    def private_key_pem(self) -> bytes:
        """The key file's bytes, read now (not kept): hand them straight to the signer."""
        try:
            return self.key_path.read_bytes()
        except OSError as exc:
            raise SigningKeyError(f"cannot read the signing key file {self.key_path}: {exc.strerror}") from None


# --- files ---------------------------------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with `mode` from the first byte (the one atomic writer creates its temporary file with it)."""
    write_atomic(path, data, mode=mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _enforce_key_mode(path: Path) -> None:
    """Our own key files are 0600; one found looser (a restore, a copy) is tightened, with a warning."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != KEY_FILE_MODE:
        log.warning("signing key file %s had mode %o; setting it to %o", path, mode, KEY_FILE_MODE)
        os.chmod(path, KEY_FILE_MODE)


# --- certificates --------------------------------------------------------------------------------------------------


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )


def _key_usage(*, signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _make_ca(name: str, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"{name} Content Credentials CA", name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signature=False, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue_signer(
    name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + SIGNER_VALIDITY, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} signer", name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signature=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _algorithm(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
        raise SigningKeyError(f"C2PA cannot sign with an EC key on curve {key.curve.name} (use P-256, P-384 or P-521)")
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise SigningKeyError(f"C2PA cannot sign with a {type(key).__name__} key (use EC P-256, RSA or Ed25519)")


def _public_der(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cert_public_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the certificate file {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SigningKeyError(f"{path} is not a PEM certificate chain") from None


def _load_key(path: Path) -> object:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key file {path}: {exc.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The library's message is dropped on purpose: nothing about the key's content reaches an error.
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key") from None


def _chain(certs: list[x509.Certificate], key_path: Path, key: object, anchors: list[x509.Certificate]) -> SigningChain:
    return SigningChain(
        chain_pem=b"".join(_cert_pem(c) for c in certs),
        key_path=key_path,
        trust_anchor_pem=b"".join(_cert_pem(c) for c in anchors),
        algorithm=_algorithm(key),
        signer_name=_common_name(certs[0]),
        not_after=certs[0].not_valid_after_utc,
    )


# --- the two ways to get a chain -----------------------------------------------------------------------------------


def load_or_create_chain(directory: Path | str, *, name: str = "Bandmate") -> SigningChain:
    """This server's chain under `directory`: made on first call, re-issued near expiry, loaded otherwise.

    Safe against two processes starting at once (an exclusive lock on `directory/.lock`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=KEY_DIR_MODE)
    os.chmod(directory, KEY_DIR_MODE)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        return _load_or_create_locked(directory, name)


def _load_or_create_locked(directory: Path, name: str) -> SigningChain:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert_path, ca_key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    cert_path, key_path = directory / SIGNER_CERT_FILE, directory / SIGNER_KEY_FILE

    if not ca_cert_path.exists() or not ca_key_path.exists():
        if cert_path.exists() or key_path.exists():
            raise SigningKeyError(
                f"{directory} has a signer certificate but no CA ({CA_CERT_FILE}, {CA_KEY_FILE}); restore them "
                "from a backup, or move the directory away to start a new chain"
            )
        ca_key, ca_cert = _make_ca(name, now)
        _write_file(ca_key_path, _key_pem(ca_key), KEY_FILE_MODE)
        _write_file(ca_cert_path, _cert_pem(ca_cert), 0o644)
        log.info("made a new Content Credentials CA in %s", directory)
    _enforce_key_mode(ca_key_path)
    ca_cert = _load_certs(ca_cert_path)[0]

    renew = True
    if cert_path.exists() and key_path.exists():
        _enforce_key_mode(key_path)
        certs = _load_certs(cert_path)
        renew = certs[0].not_valid_after_utc - now < RENEW_BEFORE or certs[0].issuer != ca_cert.subject
    if renew:
        ca_key = _load_key(ca_key_path)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise SigningKeyError(f"{ca_key_path} is not an EC key")
        key, leaf = _issue_signer(name, ca_key, ca_cert, now)
        _write_file(key_path, _key_pem(key), KEY_FILE_MODE)
        _write_file(cert_path, _cert_pem(leaf) + _cert_pem(ca_cert), 0o644)
        log.info("issued a Content Credentials signer certificate valid until %s", leaf.not_valid_after_utc.date())
    certs = _load_certs(cert_path)
    key = _load_key(key_path)
    if _public_der(key) != _cert_public_der(certs[0]):
        raise SigningKeyError(f"{key_path} does not belong to the certificate in {cert_path}")
    return _chain(certs, key_path, key, [ca_cert])


def load_operator_chain(cert_path: Path | str, key_path: Path | str) -> SigningChain:
    """An operator's certificate chain (PEM: end-entity certificate, then its issuers) and private key.

    The issuers in the file become the trust anchors, so files this server signs verify as its own.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    certs = _load_certs(cert_path)
    if len(certs) < 2:
        raise SigningKeyError(
            f"{cert_path} holds {len(certs)} certificate(s); C2PA needs the end-entity certificate followed by "
            "the CA certificate(s) that issued it"
        )
    key = _load_key(key_path)
    if _public_der(key) != _cert_public_der(certs[0]):
        raise SigningKeyError(f"the key in {key_path} does not belong to the first certificate in {cert_path}")
    try:
        usage = certs[0].extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.digital_signature:
        raise SigningKeyError(f"the certificate in {cert_path} lacks keyUsage digitalSignature, which C2PA requires")
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        log.warning("signing key file %s is readable by others (mode %o); chmod 600 it", key_path, mode)
    return _chain(certs, key_path, key, certs[1:])


def signing_chain(
    key_dir: Path | str, cert_path: Path | str | None = None, key_path: Path | str | None = None
) -> SigningChain:
    """The operator's chain when both paths are given, else this server's own chain under `key_dir`."""
    if (cert_path is None) != (key_path is None):
        raise SigningKeyError("BANDMATE_C2PA_CERT and BANDMATE_C2PA_KEY must be set together (or neither)")
    if cert_path is not None and key_path is not None:
        return load_operator_chain(cert_path, key_path)
    return load_or_create_chain(key_dir)


def load_trust_anchors(key_dir: Path | str, cert_path: Path | str | None = None) -> bytes:
    """The trust anchors for verifying, without making anything: b"" when no chain exists yet."""
    if cert_path is not None:
        return b"".join(_cert_pem(c) for c in _load_certs(Path(cert_path))[1:])
    ca = Path(key_dir) / CA_CERT_FILE
    return b"".join(_cert_pem(c) for c in _load_certs(ca)) if ca.exists() else b""
