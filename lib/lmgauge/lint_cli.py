"""``lmgauge lint-config FILE...``: every setting of a server config against the real ones."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lmgauge.config import lint_config, load_config
from lmgauge.errors import ConfigError


def setup_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmgauge lint-config", description=__doc__)
    parser.add_argument("files", type=Path, nargs="+")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per problem; exit 1 when any is an error."""
    args = setup_arg_parser().parse_args(argv)
    errors = warnings = 0
    for path in args.files:
        try:
            problems = lint_config(load_config(path))
        except ConfigError as exc:
            print(f"{path}: error: {exc}")
            errors += 1
            continue
        for problem in problems:
            print(f"{path}: {problem}")
        errors += sum(p.severity == "error" for p in problems)
        warnings += sum(p.severity == "warning" for p in problems)
    print(f"{len(args.files)} file(s): {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0
