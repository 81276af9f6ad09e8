"""python -m services.engine: runs one engine process (see `tera engine --help`)."""

from services.engine.cli import main

if __name__ == "__main__":
    main()
