"""The ``prfaas`` command: ``model prepare | prefill | decode | drive | gateway | up``.

Flags are generated from the settings classes (``--transfer-port`` sets ``transfer_port``), so
every setting is reachable as a flag and as a ``PRFAAS_*`` environment variable; a flag wins
over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings


def add_settings_flags(parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]) -> None:
    for name, field in settings_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": field.description}
        annotation = str(field.annotation)
        if "list" in annotation:
            kwargs["nargs"] = "*"
        elif field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        parser.add_argument(flag, **kwargs)


def settings_from_args(settings_cls: type[BaseSettings], args: argparse.Namespace) -> Any:
    given = {name: getattr(args, name) for name in settings_cls.model_fields
             if getattr(args, name, None) is not None}
    return settings_cls(**given)


def _run_until_signal(servers: list) -> int:
    """Wait until a server exits or Ctrl-C/SIGTERM arrives; then stop them all."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    try:
        while not stop.wait(0.5):
            dead = [s for s in servers if not s.alive()]
            if dead:
                print(f"{dead[0].name} exited; stopping", file=sys.stderr)
                code = 1
                break
    finally:
        for server in servers:
            server.stop()
    return code


def cmd_model(args: argparse.Namespace) -> int:
    from prfaas.model import DEFAULT_MODEL_DIR, prepare_model

    path = prepare_model(Path(args.model_dir or DEFAULT_MODEL_DIR), force=args.force)
    print(path)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from prfaas.settings import WorkerSettings

    settings = settings_from_args(WorkerSettings, args)
    if args.command == "prefill":
        from prefill_worker.launch import start_prefill as start
    else:
        from decode_worker.launch import start_decode as start
    server = start(settings)
    server.wait_ready()
    print(f"{args.command} worker ready at {server.url}", flush=True)
    return _run_until_signal([server])


def cmd_drive(args: argparse.Namespace) -> int:
    from gateway.disagg import DecodeTarget, decode_body, new_transfer, prefill, stream_decode
    from gateway.tokenizer import PromptTokenizer

    tokenizer = PromptTokenizer(args.model)
    token_ids = tokenizer.chat([{"role": "user", "content": args.prompt}])

    async def run() -> None:
        import httpx

        target = DecodeTarget(args.decode, args.decode_transfer)
        async with httpx.AsyncClient(timeout=300) as client:
            done = await prefill(client, args.prefill, args.served_model_name, token_ids,
                                 new_transfer(target))
            body = decode_body(args.served_model_name, token_ids,
                               {"max_tokens": args.max_tokens, "temperature": 0},
                               done.kv_params, stream=True)
            async for chunk in stream_decode(client, target.url, body):
                for choice in chunk.get("choices", []):
                    print(choice.get("text", ""), end="", flush=True)
        print()

    asyncio.run(run())
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    settings = settings_from_args(GatewaySettings, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, loop="uvloop",
                log_level="warning")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from prfaas.stack import Stack, StackSettings

    stack = Stack(settings_from_args(StackSettings, args))
    try:
        stack.start()
        print(f"starting {len(stack.servers)} processes; logs in {stack.settings.log_dir}",
              flush=True)
        stack.wait_ready()
    except BaseException:
        stack.stop()
        raise
    print(f"prfaas is up: {stack.url}/v1 (model {stack.settings.served_model_name}); "
          "Ctrl-C stops it", flush=True)
    return _run_until_signal(stack.servers)


def build_parser() -> argparse.ArgumentParser:
    from prfaas.model import DEFAULT_MODEL_DIR, SERVED_MODEL_NAME
    from prfaas.settings import WorkerSettings

    parser = argparse.ArgumentParser(prog="prfaas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="prepare the default model")
    model.add_argument("action", choices=["prepare"])
    model.add_argument("--model-dir", default=None, help=f"default {DEFAULT_MODEL_DIR}")
    model.add_argument("--force", action="store_true", help="convert again")
    model.set_defaults(func=cmd_model)

    for role in ("prefill", "decode"):
        worker = sub.add_parser(role, help=f"run a {role} worker (vLLM + prfaas connector)")
        add_settings_flags(worker, WorkerSettings)
        worker.set_defaults(func=cmd_worker)

    from gateway.settings import GatewaySettings
    from prfaas.stack import StackSettings

    gateway = sub.add_parser("gateway", help="run the OpenAI gateway over static worker lists")
    add_settings_flags(gateway, GatewaySettings)
    gateway.set_defaults(func=cmd_gateway)

    up = sub.add_parser("up", help="gateway + prefill + decode workers on this machine")
    add_settings_flags(up, StackSettings)
    up.set_defaults(func=cmd_up)

    drive = sub.add_parser("drive", help="one prompt through prefill -> KV over TCP -> decode")
    drive.add_argument("--prefill", required=True, help="prefill worker URL")
    drive.add_argument("--decode", required=True, help="decode worker URL")
    drive.add_argument("--decode-transfer", required=True, help="decode KV address host:port")
    drive.add_argument("--prompt", required=True)
    drive.add_argument("--max-tokens", type=int, default=64)
    drive.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="tokenizer directory")
    drive.add_argument("--served-model-name", default=SERVED_MODEL_NAME)
    drive.set_defaults(func=cmd_drive)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
