import sys

from ctdemo.cli import main

sys.exit(main())
