"""Progress of a CMake/Ninja build read from its output: ``... | build_progress.py LABEL LOG``.

Every line goes to LOG (the whole build log, for when it fails). On a terminal one line
updates in place (``LABEL: 57/120 steps (47%), 1:32``); otherwise a line is printed at
each tenth of the way, so CI logs show it moving without thousands of compiler lines.
Ninja numbers its steps ``[n/N]``; a build with several Ninja runs (CMake's configure
checks, then the build) shows the last. Standard library only: it runs before the
virtualenv has any package.
"""

from __future__ import annotations

import re
import sys
import time

STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]")


def main() -> int:
    label, log_path = sys.argv[1], sys.argv[2]
    tty = sys.stderr.isatty()
    start = time.monotonic()
    shown_tenth = -1
    last = ""
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        for line in sys.stdin:
            log.write(line)
            match = STEP.match(line)
            if not match:
                continue
            done, total = int(match[1]), int(match[2])
            minutes, seconds = divmod(int(time.monotonic() - start), 60)
            text = f"{label}: {done}/{total} steps ({done / total:.0%}), {minutes}:{seconds:02d}"
            if tty:
                sys.stderr.write(f"\r{text}\033[K")
                sys.stderr.flush()
                last = text
            elif (tenth := done * 10 // total) > shown_tenth:
                shown_tenth = tenth
                print(text, file=sys.stderr, flush=True)
    if tty and last:
        sys.stderr.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
