from qflare.cli.app import main

main()
