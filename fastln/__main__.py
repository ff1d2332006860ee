import sys

from fastln.cli import main

sys.exit(main())
