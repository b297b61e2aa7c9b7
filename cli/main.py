"""Entry point of the `unlearnd` command.

Command modules import torch or the server stack only inside the command bodies, so `unlearnd --help` and
the HTTP client commands start fast.
"""

from __future__ import annotations

from unlearnd.cli import core_cmds
from unlearnd.cli.help import App

app = App(help="unlearnd: machine unlearning as a service.")
core_cmds.register(app)

try:  # service and client commands (api/, worker/) register themselves when present
    from unlearnd.cli import service_cmds
except ImportError:  # pragma: no cover - only while the service package is absent
    service_cmds = None
if service_cmds is not None:
    service_cmds.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
