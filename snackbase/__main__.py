"""Entry point for `python -m snackbase` and for the shiv executable."""

from snackbase.cli import main

if __name__ == "__main__":
    main()
