import sys

from sagecore.cli import main

sys.exit(main())
