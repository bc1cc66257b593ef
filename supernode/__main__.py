import sys

from supernode.cli import main

sys.exit(main())
