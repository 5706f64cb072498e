"""`python -m wsproxy`."""

from __future__ import annotations

import sys

from wsproxy.cli import main

sys.exit(main())
