"""The commands of the `prvr` CLI, one module per area; prvr/cli.py holds the group and registers them."""
