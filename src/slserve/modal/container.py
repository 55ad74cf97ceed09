"""The module Modal imports in every container (and `slserve deploy modal` deploys): it rebuilds the app from the
plan the image carries, so each generated class is found under its name here."""

from __future__ import annotations

import os
from pathlib import Path

from slserve.modal.app import PLAN_IN_IMAGE, build_app
from slserve.modal.plan import ModalPlan

PLAN_FILE = Path(os.environ.get("SLSERVE_MODAL_PLAN", PLAN_IN_IMAGE))
PLAN = ModalPlan.from_json(PLAN_FILE.read_bytes())
app = build_app(PLAN, PLAN_FILE, __name__, globals())
