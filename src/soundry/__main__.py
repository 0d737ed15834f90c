import sys

from soundry.cli import main

sys.exit(main())
