from mlflowctl.cli.main import main

main()
