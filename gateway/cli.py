# -*- test-case-name: tests.test_cli,tests.test_registry -*-
"""
The C{trackport} command line: run the gateway, decode frames, and look at or
change what the database holds (docs/records.md and README.md, "Operating it").

Each module in L{MODULES} adds its subcommands with C{register(subparsers)};
a subcommand's C{run(args)} returns the exit status or raises
L{gateway.cliutil.CliError}, printed as one line.
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway import __version__
from gateway.cliutil import CliError

#: The modules that register subcommands.
MODULES = ("gateway.cli_run", "gateway.cli_data", "gateway.cli_commands", "gateway.rejected",
           "gateway.forward.cli", "gateway.http.tokens")


def parser() -> argparse.ArgumentParser:
    import importlib

    top = argparse.ArgumentParser(prog="trackport", description="GPS tracker gateway")
    top.add_argument("--version", action="version", version=f"trackport {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    for name in MODULES:
        importlib.import_module(name).register(sub)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()
    except CliError as e:
        print(f"trackport {args.command}: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
