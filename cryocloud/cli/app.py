"""The `cryocloud` Typer application and its error handling.

Command modules (cryocloud/cli/*_cmds.py) register their commands on `app`; `main` runs it and
turns user errors (CryocloudError, pydantic ValidationError) and environment errors (OSError: disk, network,
permissions) into a one-line message and exit 2.
"""

from __future__ import annotations

import sys

import pydantic
import typer
from rich.console import Console

from cryocloud.errors import CryocloudError

app = typer.Typer(
    name="cryocloud",
    help="Cloud-native cryo-ET processing: OME-Zarr in object storage, Dask from frames to structures.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)

USER_ERROR_EXIT = 2


def _print_version(value: bool) -> None:
    if value:
        from cryocloud import __version__

        typer.echo(f"cryocloud {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version."),
) -> None:
    """Cloud-native cryo-ET processing. Every path is a URL: a local folder, file://, or s3://."""


def _print_error(message: str) -> None:
    """One unwrapped line on stderr (logs and scripts can grep it)."""
    err_console.print(f"error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cryocloud` console command; returns the exit code."""
    import cryocloud.cli  # noqa: F401  (registers the command modules)

    try:
        app(args=argv, prog_name="cryocloud")  # standalone: usage errors print and raise SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CryocloudError as exc:
        _print_error(str(exc))
        return USER_ERROR_EXIT
    except pydantic.ValidationError as exc:
        from cryocloud.store.metadata import validation_problems

        _print_error(f"{exc.title}: {validation_problems(exc)}")
        return USER_ERROR_EXIT
    except OSError as exc:  # the environment (disk, network, permissions), not a bug: still a one-line message
        from cryocloud.store.location import describe_os_error

        _print_error(describe_os_error(exc) if not exc.filename else f"{exc.filename}: {describe_os_error(exc)}")
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        err_console.print("interrupted; rerun the same command to resume")
        return 130
    return 0


def console_main() -> None:
    sys.exit(main())
