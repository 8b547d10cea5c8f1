"""``openbell slack``: the Slack app (deployments/slack_app.py), Socket Mode or HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from openbell.deployments.cli.common import EstateOpt, command, out
from openbell.errors import OpenbellError

app = typer.Typer()


@command(app)
def slack(
    estate_path: EstateOpt = None,
    http: Annotated[
        bool, typer.Option("--http", help="HTTP mode (Slack must reach you) instead of Socket Mode")
    ] = False,
    port: Annotated[int, typer.Option("--port", help="HTTP mode: the port")] = 3000,
    path: Annotated[
        str, typer.Option("--path", help="HTTP mode: the request path")
    ] = "/slack/events",
) -> None:
    """Run the Slack app: /openbell and approval buttons, signed requests only.

    Secrets come from the environment (never the estate): OPENBELL_SLACK_TOKEN (xoxb-),
    OPENBELL_SLACK_SIGNING_SECRET, and for Socket Mode OPENBELL_SLACK_APP_TOKEN (xapp-).
    """
    from slack_sdk import WebClient

    from openbell.deployments.slack_app import build_app
    from openbell.secrets import register
    from openbell.settings import get_settings

    s = get_settings()
    missing = [
        name
        for name, value in (
            ("OPENBELL_SLACK_TOKEN", s.slack_token),
            ("OPENBELL_SLACK_SIGNING_SECRET", s.slack_signing_secret),
            *([] if http else [("OPENBELL_SLACK_APP_TOKEN", s.slack_app_token)]),
        )
        if value is None or not value.get_secret_value()
    ]
    if missing:
        raise OpenbellError(f"openbell slack needs {', '.join(missing)} in the environment")
    assert s.slack_token is not None and s.slack_signing_secret is not None
    for secret in (s.slack_token, s.slack_signing_secret, s.slack_app_token):
        if secret is not None:
            register(secret.get_secret_value())
    client = WebClient(token=s.slack_token.get_secret_value(), base_url=s.slack_base_url)
    bolt = build_app(
        estate_path, client=client, signing_secret=s.slack_signing_secret.get_secret_value()
    )
    if http:
        out.print(f"openbell slack: HTTP mode, port {port}, path {path} (bolt's own server)")
        bolt.start(port=port, path=path, http_server_logger_enabled=False)
        return
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    assert s.slack_app_token is not None
    out.print("openbell slack: Socket Mode (an outbound connection; nothing listens)")
    SocketModeHandler(bolt, s.slack_app_token.get_secret_value(), web_client=client).start()
