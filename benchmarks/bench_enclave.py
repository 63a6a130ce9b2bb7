"""Enclave boundary benchmark (see qflare.bench.enclave); same as `qflare bench enclave`."""

from qflare.bench.enclave import main

if __name__ == "__main__":
    main()
