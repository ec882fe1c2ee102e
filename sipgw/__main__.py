from sipgw.cli.main import main

main()
