"""A function's web endpoint label on Modal: what the deploy names it and what the gateway calls."""

from __future__ import annotations

import re

LABEL_LIMIT = 63  # a Modal web endpoint's label is one DNS label


def modal_label(prefix: str, function: str) -> str:
    """The web endpoint's label, from which Modal makes its URL: https://<workspace>--<label>.modal.run."""
    label = re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{function}".lower()).strip("-")
    return label[:LABEL_LIMIT].rstrip("-")
