"""``python -m testtime`` runs the command-line tool."""

from testtime.cli import main

if __name__ == "__main__":
    main()
