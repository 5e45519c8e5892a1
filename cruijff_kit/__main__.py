import sys

from cruijff_kit.cli import main

sys.exit(main())
