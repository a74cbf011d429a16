"""Line splitting for streamed HTTP bodies (NDJSON, SSE).

httpx's ``aiter_lines`` cuts lines the way ``str.splitlines`` does: also at U+0085,
U+2028 and other Unicode line breaks, which JSON encoders (Go's among them) leave raw
inside strings. A token holding one would break its object in two. These protocols
end lines with ``\\n`` (SSE also ``\\r\\n``), so cut there only.
"""

from __future__ import annotations

from lmgauge.errors import ProtocolError

MAX_LINE_BYTES = 16 * 1024 * 1024  # one streamed event; a token takes a few hundred bytes


class LineSplitter:
    """Cuts a byte stream into lines at ``\\n`` only, dropping a trailing ``\\r``."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_line_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes; a line longer than the limit is a ProtocolError."""
        if b"\n" not in data:
            self._buffer += data
            if len(self._buffer) > self._max:
                self._too_long(self._buffer)
            return []
        if self._buffer:
            data = bytes(self._buffer + data)
            self._buffer = bytearray()
        lines = data.split(b"\n")
        self._buffer += lines.pop()
        if len(data) > self._max:  # else no line can be over the limit
            for piece in [*lines, bytes(self._buffer)]:
                if len(piece) > self._max:
                    self._too_long(piece)
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]

    def _too_long(self, piece: bytes | bytearray) -> None:
        raise ProtocolError(f"a streamed line is over {self._max} bytes: {bytes(piece[:80])!r}")
