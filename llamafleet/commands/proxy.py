"""``llamafleet proxy --config FILE``: run the speculation proxy in the foreground."""

from __future__ import annotations

import argparse

from llamafleet.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("proxy", help="Run the OpenAI-compatible speculation proxy.",
                                   description="Run the OpenAI-compatible speculation proxy from a config file.")
    parser.add_argument("--config", required=True, metavar="FILE", help="Proxy config (YAML or JSON); see docs/proxy.md.")
    parser.add_argument("--check", action="store_true",
                        help="Validate the config, the token source and the TLS files, then exit.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from llamafleet.proxy.app import create_app
    from llamafleet.proxy.config import ProxyConfig

    config = ProxyConfig.load(args.config)
    app = create_app(config)  # reads the token now: a missing token fails before listening
    ssl_context = config.tls.server_context() if config.tls else None  # so are the certificate and key
    if args.check:
        print(f"{args.config}: ok (modes: {', '.join(m.value for m in config.available_modes())})")
        return 0
    try:
        web.run_app(app, host=config.listen.host, port=config.listen.port, print=None, access_log=None,
                    ssl_context=ssl_context)
    except OSError as err:
        raise UserError(f"cannot listen on {config.listen.host}:{config.listen.port}: {err.strerror}") from None
    return 0
