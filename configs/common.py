"""Defaults shared by every training config: ``smoothjax.jobs.defaults`` (in the package, so that a config file loads
by path from any directory). Kept for code that imports ``configs.common``."""

from smoothjax.jobs.defaults import base_config, parse_args

__all__ = ["base_config", "parse_args"]
