"""Names of the elements soscope writes."""

from __future__ import annotations

import re


def slug(name: str) -> str:
    """Return a modality name made safe for element names (``"Gene Expression"`` → ``"gene_expression"``)."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower() or "modality"
