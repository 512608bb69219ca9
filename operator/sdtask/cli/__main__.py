import sys

from sdtask.cli.app import main

sys.exit(main())
