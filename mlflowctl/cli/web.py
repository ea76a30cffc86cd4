"""The web UIs: `mlwf open [airflow|prometheus|grafana]` and `mlwf password`.

`open` opens the service's URL in the default browser where there is a display (or an
explicit $BROWSER), else prints it; `--print` only prints it, for scripts. The password
is never printed unless asked for with `mlwf password`. What they look up is in mlflowctl/ui.py.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mlflowctl.cli.context import App
from mlflowctl.cli.options import Home
from mlflowctl.errors import UnreachableError


def open_(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="airflow, prometheus or grafana.")] = "airflow",
    print_only: Annotated[bool, typer.Option("--print", help="Only print the URL; never start a browser.")] = False,
    home: Home = None,
) -> None:
    """Open a web UI of the stack in your browser, or print its URL where there is no display."""
    from mlflowctl import ui

    app: App = ctx.obj
    service = service.lower()
    config = app.config(home=home)
    url = ui.service_url(config, service)
    up = ui.answers(url)
    if print_only:
        app.echo(url)
        if not up:
            app.say(f"note: nothing answers at {url} now (`mlwf status` shows what runs)")
        return
    if not up:
        raise UnreachableError(
            f"nothing answers at {url}: {service} is not running",
            hint="`mlwf status` shows what runs; `mlwf up` starts what is missing",
        )
    app.echo(url)
    if service == "airflow":
        app.say(f"log in as {config.airflow_user}; the password: `mlwf password`")
    if not ui.has_display():
        app.say("no display here: open the URL above in a browser yourself")
        return
    import webbrowser

    if not webbrowser.open(url):
        app.say("no browser could be started: open the URL above yourself")


def password(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="airflow (the admin user) or grafana.")] = "airflow",
    home: Home = None,
) -> None:
    """Print the generated password of this project's stack (Airflow's admin user by default)."""
    from mlflowctl import ui

    app: App = ctx.obj
    app.echo(ui.password(app.config(home=home), service.lower()))


COMMANDS = {"open": open_, "password": password}
