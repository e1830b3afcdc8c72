"""The `cryocloud` command line. Each *_cmds module registers its commands on `app`."""

from cryocloud.cli.app import app, console_main, main

__all__ = ["app", "console_main", "main"]
