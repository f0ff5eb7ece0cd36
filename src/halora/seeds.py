"""Seeds derived from names: the same draw on any machine, in any order, in any process.

Python's hash() changes between runs; a chip's layer, a training-noise draw or a data split
must not. Each seed is the first 8 bytes of sha256 over the parts joined by ':', as a
non-negative 63-bit integer (what torch.Generator.manual_seed and numpy accept).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from `parts`, e.g. derive_seed("halora", chip_seed, layer_name)."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def split_hash(*parts: object) -> int:
    """A stable 64-bit hash that assigns data records to splits (JSON files, commonsense).

    Kept apart from derive_seed because its byte order and separator decide which records of
    a user's file are train, val and test: changing them would move existing splits."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
