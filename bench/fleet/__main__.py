from bench.fleet.suite import main

main()
