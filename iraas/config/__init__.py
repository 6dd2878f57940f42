"""Every setting, declared once: its type, default, help, environment name (IRAAS_<NAME>) and
the processes that take it. The command-line flags, `--help`, the TOML file, the environment a
worker is started with and the settings each command accepts all come from this declaration.

One frozen Settings object, read once at start-up: defaults < config file < IRAAS_* env < flags.
Components never see it whole: the composition root (`iraas/parts.py`) derives each one's own
small config from it.
"""

from .declared import CONTROLLER, KEYS, PROCESSES, ROLES, UP, WEB, WORKER, Settings, setting
from .loading import (
    cache_dir,
    declared,
    env_name,
    help_of,
    load_settings,
    log_format_from_env,
    process_env,
)

__all__ = [
    "CONTROLLER",
    "KEYS",
    "PROCESSES",
    "ROLES",
    "UP",
    "WEB",
    "WORKER",
    "Settings",
    "cache_dir",
    "declared",
    "env_name",
    "help_of",
    "load_settings",
    "log_format_from_env",
    "process_env",
    "setting",
]
