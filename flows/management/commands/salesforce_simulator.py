"""Run the Salesforce simulator in the foreground (demo mode, manual testing) until Ctrl-C or SIGTERM.

    manage.py salesforce_simulator --port 8766 [--host H] [--consumer-key X --consumer-secret Y]
                                   [--accounts N] [--opportunities N] [--callback-url URL ...]
                                   [--no-rotation] [--access-token-ttl S] [--access-log]

Prefer SALESFORCE_SIM_CONSUMER_SECRET over --consumer-secret to keep the secret out of the process list.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from clazar_dest.simulators.salesforce import add_arguments, serve


class Command(BaseCommand):
    help = "Run the Salesforce simulator (a fault-injecting fake Salesforce org) in the foreground."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        def out(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            serve(options, out)
        except OSError as exc:
            raise CommandError(f"Could not start the Salesforce simulator: {exc}") from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
