from gateway.cli import main

# The engine starts child processes with spawn, which re-imports __main__: guard the start.
if __name__ == "__main__":
    raise SystemExit(main())
