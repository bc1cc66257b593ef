import sys

from dfdaemon.cli import main

sys.exit(main())
