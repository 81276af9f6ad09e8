"""python -m services.gateway: the edge and the router in one process (see --help)."""

from services.gateway.cli import main

if __name__ == "__main__":
    main()
