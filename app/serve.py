"""``python -m app.serve``: start the service; the launcher is :mod:`app.runtime.launcher`."""

import sys

from app.runtime.launcher import main

if __name__ == "__main__":
    sys.exit(main())
