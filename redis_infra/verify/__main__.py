"""`python3 -m redis_infra.verify`: see redis_infra/verify/cli.py and docs/verify.md."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
