"""How long work reports its progress."""

from __future__ import annotations

from collections.abc import Callable

Report = Callable[[float, str], None]
"""`report(progress, message)`: progress in [0, 1], message one line ("step 12/80 loss 1.23")."""
