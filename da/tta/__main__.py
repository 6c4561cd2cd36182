"""``python -m da.tta key=value ...`` (``da tta``): one test-time run (``da.tta.run.fit_stream``); ``--help`` lists
every key with its default (``da.tta.config.help_text``).

Overrides are Hydra's (``method=eata``, ``protocol=mixed``, ``protocol.batch_size=128``, ``severity=3``,
``init=<run folder>``); the config is composed with Hydra's compose API rather than ``@hydra.main`` because the run
folder is a key of the config (``run_dir=``) and a stream run needs neither Hydra's job folders nor its launchers
(a benchmark loops in Python). A ConfigError (a bad key or value, missing data) is one line on stderr and exit 2;
Ctrl-C is exit 130, SIGTERM exit 143 (each one line; the stream stops as Ctrl-C stops it).
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from da.errors import ConfigError
    from da.run import raise_terminated, stopped

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if main_thread else None  # SIGTERM stops as Ctrl-C
    try:
        if any(a in ("-h", "--help") for a in args):
            from da.tta.config import help_text

            print(help_text())
            return 0
        from da.tta.run import fit_stream

        fit_stream(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (da.run.Terminated)
        word, code = stopped(err)
        print(word, file=sys.stderr)
        return code
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
