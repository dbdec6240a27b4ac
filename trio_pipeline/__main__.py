"""``python -m trio_pipeline``: the ``trio-pipeline`` command."""

from trio_pipeline._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
