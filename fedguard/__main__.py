"""The ``fedguard`` console script and ``python -m fedguard``."""

import sys


def run() -> None:
    """Load the command line and run it; Ctrl-C while it loads (importing torch takes about a second) exits 130 quietly."""
    try:
        from fedguard.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("fedguard: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
