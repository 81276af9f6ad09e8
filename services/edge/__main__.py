"""python -m services.edge: runs the edge (see `tera edge --help`)."""

from services.edge.cli import main

if __name__ == "__main__":
    main()
