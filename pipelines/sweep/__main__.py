import sys

from pipelines.sweep.cli import main

sys.exit(main())
