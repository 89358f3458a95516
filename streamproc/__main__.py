"""``python -m streamproc`` and the ``streamproc`` command.

The command line imports Faust, aiokafka and the Kubernetes client, which takes a moment; a
Ctrl-C in that moment comes before the command's own handling exists, and is a plain exit too.
"""

import sys


def run() -> None:
    """Import the command line, then run it."""
    try:
        from streamproc.cli import main  # noqa: PLC0415 - imported here so Ctrl-C is caught
    except KeyboardInterrupt:
        sys.stderr.write("streamproc: interrupted\n")
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    run()
