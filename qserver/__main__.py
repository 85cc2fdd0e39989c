"""`python -m qserver`: the same entry point as the `qserver` console script."""

from qserver.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
