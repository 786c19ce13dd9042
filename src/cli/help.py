"""--help that reads cleanly: each option's default stated once, in the form a user would type it."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends "(default: X)" to an option's help unless
    the help already states its default, or there is nothing to state (no default, a switch off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default" in text or default is None or default is False or default == argparse.SUPPRESS \
                or not action.option_strings:
            return text
        if isinstance(default, (list, tuple)):
            if not default:
                return text
            default = " ".join(map(str, default))
        return f"{text} (default: {escape(str(default))})"


def escape(text: str) -> str:
    """argparse %-formats help strings: a literal "%" must be written "%%"."""
    return text.replace("%", "%%")
