"""Screenshots of offline pages in headless Chromium (the HTML report, the dashboard): the
test skips, naming the package, where Chromium is not installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image


def screenshot(page: Path, shot: Path, *, width: int, height: int) -> np.ndarray:
    """``page`` rendered at ``width`` x ``height`` into ``shot``; its RGB pixels, 0 to 1."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium not found: install the Debian package chromium")
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={shot.parent / 'chromium-profile'}",  # leave the user's alone
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert shot.exists(), result.stderr[-2000:]
    return np.asarray(image.imread(shot))[:, :, :3]
