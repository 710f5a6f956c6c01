"""Subcommands of the `prvr` CLI that live in their own modules (registered at the bottom of prvr/cli.py)."""
