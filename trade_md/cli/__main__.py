import sys

from trade_md.cli import main

sys.exit(main())
