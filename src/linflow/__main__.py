import sys

from linflow.launch import main

sys.exit(main())
