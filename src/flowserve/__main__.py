from flowserve.cli import main

main()
