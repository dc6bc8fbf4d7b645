import sys
from hapair.cli import main

sys.exit(main())
