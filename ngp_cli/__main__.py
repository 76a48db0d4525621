from ngp_cli.cli import main

main()
