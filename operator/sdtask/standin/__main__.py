"""`python -m sdtask.standin --models-dir DIR [--port N] ...`: serve the stand-in Web UI in the foreground."""

import sys

from sdtask.standin.server import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m sdtask.standin"))
