"""`python -m pagedserve ...` is the `pagedserve` command."""
import sys

from pagedserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
