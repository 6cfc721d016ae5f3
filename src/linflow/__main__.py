import sys

from linflow.cli import main

sys.exit(main())
