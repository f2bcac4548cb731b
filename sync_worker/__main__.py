import sys

from sync_worker.cli import main

sys.exit(main())
