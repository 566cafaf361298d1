import sys

from snapshotter.cli import main

sys.exit(main())
