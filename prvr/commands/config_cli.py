"""`prvr presets` and `prvr config`: list the bundled presets and print a resolved configuration."""

from __future__ import annotations

import json

import click

from prvr.commands.common import fail_cleanly, resolve_config
from prvr.config import list_presets, load_preset

__all__ = ["presets_command", "config_command"]


@click.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_cleanly
def presets_command(as_json: bool) -> None:
    """List the bundled presets with their parameter counts."""
    from prvr.model import DreamPRVR, count_parameters

    rows = []
    for name in list_presets():
        config = load_preset(name)
        rows.append({"preset": name, "parameters": count_parameters(DreamPRVR(config.model)),
                     "hidden_size": config.model.hidden_size, "branches": len(config.model.block.widths),
                     "registers": config.model.registers.num_registers if config.model.registers.enabled else 0})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'preset':<14}{'parameters':>14}{'D':>6}{'branches':>10}{'registers':>11}")
    for row in rows:
        click.echo(f"{row['preset']:<14}{row['parameters']:>14,}{row['hidden_size']:>6}{row['branches']:>10}"
                   f"{row['registers']:>11}")


@click.command("config")
@click.option("--preset", default="cpu", show_default=True, help="Preset name or a JSON file.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a config field, e.g. --set model.registers.enabled=false (repeatable).")
@fail_cleanly
def config_command(preset: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved configuration as JSON."""
    click.echo(resolve_config(preset, overrides, None).to_json())
