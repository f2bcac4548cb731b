import sys

from sync_worker.app.cli import main

sys.exit(main())
