"""QKD benchmark (see qflare.bench.qkd); same as `qflare bench qkd`."""

from qflare.bench.qkd import main

if __name__ == "__main__":
    main()
