"""`python3 -m redis_infra.health serve|check|acl --config PATH` (see cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
