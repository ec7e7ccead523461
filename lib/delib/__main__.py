"""`python -m delib`: the same command line as `delib`."""
import sys

from .cli import main

sys.exit(main())
