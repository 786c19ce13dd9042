"""`phase` for src/grpo/trainer.py, which imports it from here; it is defined in src/checks.py."""
from src.checks import phase  # noqa: F401
