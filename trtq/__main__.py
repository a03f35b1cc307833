import sys

from trtq.cli import main

sys.exit(main())
