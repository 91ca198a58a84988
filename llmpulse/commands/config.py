"""`llmpulse config check [FILE]`: the effective configuration, secrets masked, or its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from llmpulse.settings import masked_url

config_app = typer.Typer(no_args_is_help=True, help="The configuration: check it, see what is in effect.")


@config_app.command("check")
def config_check(
    file: Optional[Path] = typer.Argument(None, help="YAML file (default: --config, $LLMPULSE_CONFIG_FILE, "
                                          "./llmpulse.yaml)"),
) -> None:
    """Load the configuration as the worker would (env over file over defaults) and print what is
    in effect, secrets masked; or one line per problem, each naming its entry (exit 2)."""
    from llmpulse import cli
    from llmpulse.settings import config_file_in_use, load_settings

    chosen = file or cli._config["file"]
    settings = load_settings(chosen)  # a ConfigError is printed by the CLI's main (exit 2)
    used = config_file_in_use(chosen)
    effective = _masked(settings.model_dump(mode="json"))  # SecretStr values dump as '**********'
    where = f"{used}" if used.exists() else f"{used} (not found: environment and defaults only)"
    typer.echo(f"# configuration is valid; file: {where}")
    typer.echo(yaml.safe_dump(effective, sort_keys=False, default_flow_style=None, width=100).rstrip())


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return masked_url(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value
