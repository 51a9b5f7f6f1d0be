"""`python -m logmem ...`: the `logmem` command."""

import sys

from logmem.api.cli import main

if __name__ == "__main__":  # importing this module (documentation tools do) runs nothing
    sys.exit(main())
