"""The `cryocloud` command line. Each *_cmds module registers its commands on `app`."""

from cryocloud.cli.app import app, console_main, main
from cryocloud.cli import run_cmds  # noqa: F401
from cryocloud.cli import store_cmds  # noqa: F401
from cryocloud.cli import reconstruct_cmds  # noqa: F401
from cryocloud.cli import simulate_cmds  # noqa: F401
from cryocloud.cli import align_cmds  # noqa: F401
from cryocloud.cli import average_cmds  # noqa: F401
from cryocloud.cli import submit_cmds  # noqa: F401
from cryocloud.cli import preprocess_cmds  # noqa: F401
from cryocloud.cli import pick_cmds  # noqa: F401
from cryocloud.cli import portal_cmds  # noqa: F401
from cryocloud.cli import watch_cmds  # noqa: F401
from cryocloud.cli import denoise_cmds  # noqa: F401
from cryocloud.cli import curate_cmds  # noqa: F401
from cryocloud.cli import learn_cmds  # noqa: F401
from cryocloud.cli import segment_cmds  # noqa: F401

__all__ = ["app", "console_main", "main"]
