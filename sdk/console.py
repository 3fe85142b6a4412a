"""The one place where a CLI turns errors into a single line and an exit code."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

from sdk.errors import EdgeError

#: exit code for an :class:`EdgeError` (bad input, failed verification, refused model).
EXIT_ERROR = 1
#: exit code for a wrong command line (argparse uses 2 as well).
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def setup_logging(verbose: int = 0) -> None:
    """Human logs go to stderr so stdout stays machine-readable (``--json``)."""
    level = logging.WARNING if verbose < 0 else logging.INFO if verbose == 0 else logging.DEBUG
    level = getattr(logging, os.environ.get("EDGEFLEET_LOG_LEVEL", ""), level)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def run_cli(prog: str, main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main`` and turn every expected failure into one line on stderr.

    A traceback is shown only for a bug (an exception outside :class:`EdgeError`), and only the
    last line of it unless ``EDGEFLEET_DEBUG`` is set, so a user never sees a wall of frames for
    bad input.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(main(args) or 0)
    except EdgeError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:
        if os.environ.get("EDGEFLEET_DEBUG"):
            raise
        sys.stderr.write(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (set EDGEFLEET_DEBUG=1 for details)\n"
        )
        return EXIT_ERROR
