from credbridge.core.cli import main

main()
