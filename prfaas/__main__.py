"""``python -m prfaas`` runs the CLI."""

import sys

from prfaas.cli import main

sys.exit(main())
