"""What an API token looks like: pure constants, shared by storage and the log redactor."""

from __future__ import annotations

import re

TOKEN_PREFIX = "sfd_"
#: What a token looks like, so logs can redact one wherever it appears.
TOKEN_PATTERN = re.compile(TOKEN_PREFIX + r"[A-Za-z0-9_-]{43}")
