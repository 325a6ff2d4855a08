"""How the sim seals private pages of encrypted VM types, as SEV-SNP and TDX memory encryption do.

Each VM has its own key; the tweak is the host frame number, so the same plaintext on two frames is
two different ciphertexts. That is why a host ``memcpy`` of a private page to another frame hands
the guest garbage, and why only the trusted agent (which can decrypt under the old frame and
re-encrypt under the new one) may move it. AES-XTS is the mode real memory encryption engines use.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..domain.units import PAGE_SIZE

ZERO_PAGE = bytes(PAGE_SIZE)


def new_key() -> bytes:
    """An AES-256-XTS key (two 256-bit halves)."""
    return os.urandom(64)


def _cipher(key: bytes, pfn: int) -> Cipher[modes.XTS]:
    return Cipher(algorithms.AES(key), modes.XTS(pfn.to_bytes(16, "little")))


def seal(key: bytes, pfn: int, plaintext: bytes) -> bytes:
    encryptor = _cipher(key, pfn).encryptor()
    return encryptor.update(plaintext) + encryptor.finalize()


def unseal(key: bytes, pfn: int, ciphertext: bytes) -> bytes:
    decryptor = _cipher(key, pfn).decryptor()
    return decryptor.update(ciphertext) + decryptor.finalize()
