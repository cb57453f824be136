"""``python -m glimpse``: the same as the ``glimpse`` console script."""

from glimpse.cli import run

run()
