"""`python -m serkeras` is the `serkeras` command."""

from serkeras.cli import main

if __name__ == "__main__":
    main()
