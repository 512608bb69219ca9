"""`python -m sdtask.standin [--load-delay S] [--image-delay S] <Web UI args>`: serve the stand-in in the foreground."""

import sys

from sdtask.standin.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m sdtask.standin"))
