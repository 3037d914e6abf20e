"""Bech32 (BIP-173), the encoding of age identities and recipients.

age encodes an X25519 key as bech32 — the original BIP-173 checksum, not bech32m — with the
human-readable part ``age`` (recipients) or ``age-secret-key-`` (identities, then upper-cased).
The PyPI codecs (``bech32``, ``bech32m``) are Bitcoin segwit-address codecs whose public API
takes a witness version; this is the spec's checksum and 8-to-5 bit regrouping alone, checked
against BIP-173's test vectors and against ``age-keygen`` in the tests.

Unlike segwit addresses, age strings are not limited to 90 characters; this codec has no limit.
"""

from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Bech32Error(ValueError):
    """Not a valid bech32 string (the message never echoes the input: it may be a key)."""


def _polymod(values: list[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                check ^= generator
    return check


def _expand_hrp(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(
    data: bytes | list[int], source_bits: int, target_bits: int, *, pad: bool
) -> list[int]:
    accumulator = 0
    bits = 0
    out: list[int] = []
    mask = (1 << target_bits) - 1
    for value in data:
        accumulator = (accumulator << source_bits) | value
        bits += source_bits
        while bits >= target_bits:
            bits -= target_bits
            out.append((accumulator >> bits) & mask)
    if pad:
        if bits:
            out.append((accumulator << (target_bits - bits)) & mask)
    elif bits >= source_bits or (accumulator << (target_bits - bits)) & mask:
        raise Bech32Error("invalid padding")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Bech32 of ``data`` under the lowercase human-readable part ``hrp``."""
    if not hrp or hrp != hrp.lower() or any(not 33 <= ord(c) <= 126 for c in hrp):
        raise Bech32Error("the human-readable part must be 1+ lowercase printable characters")
    words = _regroup(data, 8, 5, pad=True)
    polymod = _polymod([*_expand_hrp(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[w] for w in [*words, *checksum])


def decode_words(text: str) -> tuple[str, list[int]]:
    """Split a bech32 string into its human-readable part and 5-bit data words (checksum off)."""
    if any(not 33 <= ord(c) <= 126 for c in text):
        raise Bech32Error("character out of range")
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("mixed case")
    text = text.lower()
    separator = text.rfind("1")
    if separator < 1 or separator + 7 > len(text):
        raise Bech32Error("missing separator, empty human-readable part or short checksum")
    hrp, rest = text[:separator], text[separator + 1 :]
    if any(c not in CHARSET for c in rest):
        raise Bech32Error("invalid data character")
    words = [CHARSET.index(c) for c in rest]
    if _polymod([*_expand_hrp(hrp), *words]) != 1:
        raise Bech32Error("checksum mismatch")
    return hrp, words[:-6]


def decode(hrp: str, text: str) -> bytes:
    """The bytes a bech32 string carries; its human-readable part must be ``hrp``."""
    found, words = decode_words(text)
    if found != hrp:
        raise Bech32Error(f"human-readable part {found!r} is not {hrp!r}")
    return bytes(_regroup(words, 5, 8, pad=False))
