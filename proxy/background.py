"""Run the proxy on its own event loop in a background thread (tests, the demo, benchmarks)."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from llamafleet.proxy.app import STATE, ProxyState, create_app
from llamafleet.proxy.config import ProxyConfig


class BackgroundProxy:
    """``with BackgroundProxy(config) as proxy: proxy.url`` serves until the block ends."""

    def __init__(self, config: ProxyConfig, token: str | None = None):
        self.app = create_app(config, token)
        self.ssl_context = config.tls.server_context() if config.tls else None
        self.host = config.listen.host
        self.port = config.listen.port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="llamafleet-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    @property
    def state(self) -> ProxyState:
        return self.app[STATE]

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as err:  # noqa: BLE001 - handed to the starting thread
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> "BackgroundProxy":
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
