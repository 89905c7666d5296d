"""Entry point of the frozen client: the same `main` as the `flowerdemo` console script."""

from flowerdemo.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
