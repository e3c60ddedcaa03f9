import sys

from nbxent.cli import main

sys.exit(main())
