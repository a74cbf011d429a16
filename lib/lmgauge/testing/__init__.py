"""Test instruments for lmgauge itself: a calibrated token server (``token_server``)."""

from lmgauge.testing.schedule import Fault, Schedule, SendRecord
from lmgauge.testing.serving import control, records, serve_in_process, serve_in_thread
from lmgauge.testing.token_server import TokenServer

__all__ = [
    "Fault",
    "Schedule",
    "SendRecord",
    "TokenServer",
    "control",
    "records",
    "serve_in_process",
    "serve_in_thread",
]
