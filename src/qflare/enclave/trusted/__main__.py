"""Entry point of the enclave process: ``python -m qflare.enclave.trusted --help``."""

from __future__ import annotations

import sys

from qflare.enclave.trusted.boot import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
