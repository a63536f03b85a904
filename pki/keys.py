# SPDX-License-Identifier: Apache-2.0
"""Private keys: generation by named type, and encryption at rest with a passphrase."""

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.errors import PKIError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

KEY_TYPES = ("ecdsa-p256", "rsa-2048", "rsa-3072")
MIN_PASSPHRASE_LENGTH = 12


def generate_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise PKIError(f"unknown key type {key_type!r}", f"use one of {', '.join(KEY_TYPES)}")


def key_type_of(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"ecdsa-{'p256' if key.curve.name == 'secp256r1' else key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    return type(key).__name__


def plain_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def encrypted_pem(key: PrivateKey, passphrase: bytes) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise PKIError(
            f"the CA passphrase is shorter than {MIN_PASSPHRASE_LENGTH} characters",
            "choose a longer one (for instance: openssl rand -base64 30)",
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def load_encrypted_key(path: Path, passphrase: bytes) -> PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PKIError(
            f"CA key {path} is missing",
            "restore it from your offline copy (the state directory is incomplete)",
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError):
        raise PKIError(
            f"cannot decrypt CA key {path}: wrong passphrase or damaged key",
            "set PROBEFORGE_PKI_PASSPHRASE (or --passphrase-file) to the passphrase the CA "
            "was created with",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(f"CA key {path} is of unsupported type {key_type_of(key)}",
                       "restore the original key")
    return key
