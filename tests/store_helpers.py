"""Helpers shared by the store-safety tests (imported by name: tests/ is not a package)."""

import hashlib
import os
from pathlib import Path


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` with a hash of its bytes (to show a store is byte-identical)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(path))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out
