"""Run the service with uvicorn, in the foreground (`unlearnd serve`) or in a background thread (`unlearnd
demo`, the tests): one code path, so the demo and the tests exercise the real server."""

from __future__ import annotations

import threading
import time

from unlearnd.api.settings import Settings


class ServerThread:
    """uvicorn in a daemon thread on `port` (0 = a free one); `url` is known once `start` returns."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        from unlearnd.api.app import create_app

        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level=log_level))
        self.host = host
        self.port = port
        self._thread = threading.Thread(target=self.server.run, name="unlearnd-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 120.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from unlearnd.api.app import create_app

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
