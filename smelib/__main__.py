"""``python -m smelib`` is the same as the ``smelib`` console script."""

from smelib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
