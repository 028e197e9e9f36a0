from pio_remote.cli import main

main()
