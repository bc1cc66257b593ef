import sys

from dfget.cli import main

sys.exit(main())
