"""This repository's own pytest wiring (the suite's plugin lives in lib/lmgauge)."""

import os

from hypothesis import settings

# On CI, print the reproduction blob of any falsifying example so it can be replayed.
settings.register_profile("ci", print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
