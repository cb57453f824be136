"""Debian's Chromium for the browser tests: where it is and the flags that keep it quiet and local.

``playwright install`` is never needed: Playwright drives /usr/bin/chromium (``apt-get install
chromium``; ``make browser-test`` installs it).
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium phones home at start-up; a closed network refuses it, noisily.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
