"""python -m services.router: runs the router (see `tera router --help`)."""

from services.router.cli import main

if __name__ == "__main__":
    main()
