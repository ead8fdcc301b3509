"""Run the Clazar API simulator in the foreground (demo mode, manual testing) until Ctrl-C or SIGTERM.

    manage.py clazar_simulator --port 8010 [--host H] [--client-id X --client-secret Y]
                               [--rate-limit N] [--expires-in S] [--idempotency] [--seed FILE]

Prefer CLAZAR_SIM_CLIENT_SECRET over --client-secret to keep the secret out of the process list.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from clazar_dest.simulators.clazar import add_arguments, serve


class Command(BaseCommand):
    help = "Run the Clazar API simulator (a fault-injecting fake of the Clazar API) in the foreground."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        def out(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            serve(options, out)
        except OSError as exc:
            raise CommandError(f"Could not start the Clazar simulator: {exc}") from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
