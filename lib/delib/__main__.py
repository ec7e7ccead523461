"""`python -m delib`: the same command line as `delib`."""
import sys

from delib.cli import main

sys.exit(main())
