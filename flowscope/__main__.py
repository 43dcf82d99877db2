import sys

from flowscope.cli.main import main

sys.exit(main())
