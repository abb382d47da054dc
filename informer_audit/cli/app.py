"""The command group, the entry point, and the one place exceptions become exit codes."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import __version__
from ..errors import DeviceUnavailableError, InformerAuditError
from .render import console, escape

F = TypeVar("F", bound=Callable[..., Any])

# 0 and 1 come from the run's summary object (its return_code); refusals map here.
EXIT_REFUSED, EXIT_DEVICE, EXIT_INTERRUPTED = 2, 3, 130


def flag_hint(params: Any) -> str:
    """`` (command line: --device)``: the flags that set the library parameters an error or
    warning names in its ``params`` (its message names parameters, not flags); ``""`` if none."""
    ctx = click.get_current_context(silent=True)
    if not params or ctx is None:
        return ""
    from .options import flags_for

    flags = flags_for(tuple(params), ctx)
    return f" (command line: {', '.join(flags)})" if flags else ""


def handle_errors(func: F) -> F:
    """Turn the library's refusals into a one-line message and an exit code.

    The library warns through :mod:`warnings` (it never prints): its own warnings are shown as
    one ``warning:`` line each, others as Python shows them. Both add the flag spelling of the
    parameters the message names (:func:`flag_hint`).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        from ..errors import InformerAuditWarning

        plain_show = warnings.showwarning

        def show(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
            if issubclass(category, InformerAuditWarning):
                text = f"{message}{flag_hint(getattr(message, 'params', ()))}"
                console(stderr=True).print(f"[bold yellow]warning:[/] {escape(text)}")
            else:
                plain_show(message, category, *rest, **kw)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", InformerAuditWarning)
                warnings.showwarning = show
                return func(*args, **kwargs)
        except InformerAuditError as exc:
            text = f"{exc}{flag_hint(exc.params)}"
            console(stderr=True).print(f"[bold red]error:[/] {escape(text)}")
            sys.exit(EXIT_DEVICE if isinstance(exc, DeviceUnavailableError) else EXIT_REFUSED)
        except KeyboardInterrupt:
            # Not 1: that code means "done, some files failed"; this run is not done.
            console(stderr=True).print(
                "[bold yellow]interrupted[/]: rerun the same command to resume (flag keeps its "
                "finished rows in OUTPUT.journal; calibrate and evaluate keep scores with --cache)"
            )
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="informer-audit")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Audit an ONNX image classifier: flag predictions it cannot tell apart (INFORMER).

    Exit codes: 0 done; 1 done but some image files failed; 2 bad invocation or input refused;
    3 requested device unavailable; 130 interrupted (rerun the same command to resume).
    """
    from rich.logging import RichHandler

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=console(stderr=True), show_time=False, show_path=False)
    root = logging.getLogger("informer_audit")
    root.handlers = [h for h in root.handlers if not isinstance(h, RichHandler)] + [handler]
    root.setLevel(level)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="informer-audit")
