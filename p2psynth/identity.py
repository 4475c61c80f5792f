"""The node's Ed25519 identity: one key signs releases and is the libp2p peer identity.

The private key is stored as unencrypted PKCS#8 PEM with mode 0600. Loading
rejects a key file that the group or others may read, as OpenSSH does, because
anyone holding it can publish releases in the node's name.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2psynth.errors import IdentityError


def create_private_key(path: Path) -> Ed25519PrivateKey:
    """Generate a key and write it to ``path`` with mode 0600; never overwrite a file."""
    path = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    try:
        # O_EXCL: never replace an existing identity; the mode is set at creation,
        # so the key is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"key file {path} exists already; refusing to overwrite a node identity") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the node key; raise IdentityError if it is missing, unreadable or too permissive."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(f"key file {path} not found; create a node with 'p2psynth init DIR'") from None

    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"key file {path} has mode {stat.S_IMODE(mode):04o}, so other users can read it; "
            f"run 'chmod 600 {path}' (and consider the key compromised if others did read it)"
        )

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"key file {path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"key file {path} holds a {type(key).__name__}; p2psynth needs an Ed25519 key")
    return key


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """Return the raw 32-byte public key, the author field of releases."""
    return key.public_key().public_bytes_raw()
