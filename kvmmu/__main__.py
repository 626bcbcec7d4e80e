"""``python -m kvmmu``: the command line (see :mod:`kvmmu.cli`)."""
from kvmmu.cli import main

if __name__ == "__main__":      # not when a test imports every module of the package
    raise SystemExit(main())
