"""Authentication benchmark (see qflare.bench.auth); same as `qflare bench auth`."""

from qflare.bench.auth import main

if __name__ == "__main__":
    main()
