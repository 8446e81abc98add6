"""A run: its configuration, its folder, the services its steps share, and the steps themselves.

The mitigation loop (:mod:`fairloop.graphs.loop`), the chat (:mod:`fairloop.chat`) and
experiments (:mod:`fairloop.experiments`) all work through this package.
"""

from fairloop.runs.config import MEMORY_KEYS, RunConfig
from fairloop.runs.folder import RunFolder
from fairloop.runs.services import RunServices

__all__ = ["MEMORY_KEYS", "RunConfig", "RunFolder", "RunServices"]
