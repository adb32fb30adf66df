#!/usr/bin/env python
"""Django's command-line utility for MQI Communicator."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mqi_site.settings")
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
        sys.stdout.flush()  # a closed pipe shows here, where it can be handled, not at exit
    except BrokenPipeError:
        # The reader went away (`manage.py case_status | head -1`): nothing more to say, and
        # Python's own last flush of stdout must not print a traceback either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
