"""``plantsync-cloud``: serve, migrate, admin, import, mqtt-ingest.

Database: ``--db URL`` (or a SQLite file path), else $PLANTSYNC_CLOUD_DB, else
``./plantsync-cloud.db``. ``migrate`` is explicit: ``serve`` and ``admin`` refuse a
database that is not at this version's schema and say to run ``migrate`` -- except the
default SQLite file (no --db, no $PLANTSYNC_CLOUD_DB), which they migrate themselves so a
newcomer's ``plantsync-cloud serve`` just works. A named database (production, systemd
runs ``migrate`` in ExecStartPre) is never changed behind the operator's back.

Logs go to stderr; stdout carries only results (the token is alone on the last line).
Errors: one clear line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import ipaddress
import json
import logging
import os
import sys
import threading
from collections.abc import Coroutine, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import structlog
import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from zeroconf import InterfaceChoice

from buffer.discovery import CLOUD_SERVICE, Advertiser, interfaces_from_env
from cloud.app import create_app
from cloud.auth import (
    check_gateway_id,
    check_password,
    check_user_name,
    create_api_token,
    create_gateway,
    create_user,
    revoke_gateway,
    set_password,
)
from cloud.core import (
    Database,
    check_current,
    clock,
    head_revision,
    plant,
    resolve_url,
    upgrade,
)
from cloud.core.errors import CloudError, DomainError
from cloud.core.systemd import NotifyingServer
from cloud.ingest import parse_broker_url, run_mqtt_ingest
from cloud.production import TableImportError, import_file

T = TypeVar("T")


def _run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` that lets SQLite's connection threads finish before the loop closes,
    on every path. Engines are disposed where they are made (cloud/core/migrate.py, Database);
    but aiosqlite stops a connection that failed to *open* (a missing directory, no write
    permission) without waiting: its worker thread then answers on a closed loop and
    prints a "RuntimeError: Event loop is closed" traceback after our one-line error."""
    async def settled() -> T:
        try:
            return await main
        finally:
            await _join_sqlite_threads()

    return asyncio.run(settled())


async def _join_sqlite_threads(timeout: float = 5.0) -> None:  # noqa: ASYNC109

    # aiosqlite names no threads: Python names them after the target function
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, timeout)


def _version() -> str:
    try:
        return version("plantsync")
    except PackageNotFoundError:
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plantsync-cloud",
                                description="The plantsync cloud service.")
    p.add_argument("--version", action="version", version=f"plantsync-cloud {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db_help = ("database URL (sqlite+aiosqlite:///FILE, postgresql+asyncpg://USER@HOST/DB) or "
               "a SQLite file; default $PLANTSYNC_CLOUD_DB, else ./plantsync-cloud.db")

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--db", help=db_help)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    s.add_argument("--max-body-mb", type=float, default=8.0,
                   help="largest ingest body accepted, MiB (default 8); larger gets 413")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--no-zeroconf", action="store_true",
                   help="do not advertise _plantsync._tcp.local. (gateways then need cloud.url)")
    s.add_argument("--trusted-proxy", action="append", metavar="ADDR",
                   default=_env_list("PLANTSYNC_TRUSTED_PROXIES"),
                   help="a reverse proxy whose X-Forwarded-For/-Proto are believed (the "
                        "client address of the login limits, https for the Secure cookie); "
                        "an IP or network, repeatable; default $PLANTSYNC_TRUSTED_PROXIES "
                        "(comma-separated), else none: the TCP peer is the client")
    s.add_argument("--ssl-certfile", metavar="PEM", default=_env("PLANTSYNC_SSL_CERTFILE"),
                   help="serve HTTPS with this certificate (chain); default "
                        "$PLANTSYNC_SSL_CERTFILE, else plain HTTP")
    s.add_argument("--ssl-keyfile", metavar="PEM", default=_env("PLANTSYNC_SSL_KEYFILE"),
                   help="the certificate's private key; default $PLANTSYNC_SSL_KEYFILE")
    s.add_argument("--docs", choices=["open", "login"],
                   default=_env("PLANTSYNC_DOCS") or "open",
                   help="/docs, /redoc and /openapi.json: open to anyone (default) or only "
                        "after login; default $PLANTSYNC_DOCS")

    m = sub.add_parser("migrate", help="create or upgrade the database schema")
    m.add_argument("--db", help=db_help)

    a = sub.add_parser("admin", help="gateways, users and tokens")
    asub = a.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    c = asub.add_parser("create-gateway",
                        help="create a gateway; prints its token once, on the last line")
    c.add_argument("gateway_id", metavar="ID")
    c.add_argument("--rotate", action="store_true",
                   help="give an existing gateway a new token (the old one stops working)")
    c.add_argument("--db", help=db_help)
    r = asub.add_parser("revoke-gateway", help="revoke a gateway's token (records stay)")
    r.add_argument("gateway_id", metavar="ID")
    r.add_argument("--db", help=db_help)
    u = asub.add_parser("create-user", help="create a user; the password is read from stdin "
                        "(one line, at least 10 characters)")
    u.add_argument("name", metavar="NAME")
    u.add_argument("--role", required=True, choices=["admin", "planner", "viewer"])
    u.add_argument("--db", help=db_help)
    w = asub.add_parser("set-password", help="set a user's password from stdin (one line); "
                        "ends the user's sessions")
    w.add_argument("name", metavar="NAME")
    w.add_argument("--db", help=db_help)
    t = asub.add_parser("create-token", help="an API token acting as USER; printed once, "
                        "on the last line")
    t.add_argument("name", metavar="USER")
    t.add_argument("--name", dest="token_name", help="what the token is for (e.g. erp-sync)")
    t.add_argument("--db", help=db_help)

    i = sub.add_parser("import", help="import materials, BOMs, routings or work orders from a "
                       "CSV or XLSX file (all or nothing; every problem is listed by row)")
    i.add_argument("kind", choices=["materials", "boms", "routings", "work-orders"])
    i.add_argument("file", metavar="FILE", help="CSV (UTF-8 or GBK) or XLSX; '-' reads stdin")
    i.add_argument("--tz", default=None,
                   help="time zone of due dates written without one (e.g. Asia/Shanghai; "
                        "default: the plant's, see /settings)")
    i.add_argument("--as", dest="as_user", default="cli",
                   help="name recorded in the audit log (default cli)")
    i.add_argument("--db", help=db_help)

    q = sub.add_parser("mqtt-ingest", help="store gateway batches from an MQTT broker")
    q.add_argument("--broker", required=True, help="mqtt://HOST[:1883] or mqtts://HOST[:8883]; "
                   "credentials from $PLANTSYNC_MQTT_USERNAME/$PLANTSYNC_MQTT_PASSWORD")
    q.add_argument("--db", help=db_help)
    q.add_argument("--group", default="plantsync", help="shared subscription group")
    q.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def configure_logging(level: str = "info") -> None:
    """structlog and the stdlib (uvicorn, alembic) both to stderr."""
    lvl = getattr(logging, level.upper())
    logging.basicConfig(stream=sys.stderr, level=lvl,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    # plain tracebacks: rich's (when installed) print every local and took
                    # ~27 s per error under load, stalling the answer; the journal wants text
                    structlog.dev.ConsoleRenderer(
                        colors=False, exception_formatter=structlog.dev.plain_traceback)],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def _prepare(db_arg: str | None) -> str:
    """Resolve the URL and make sure the schema is current (see module docstring)."""
    resolved = resolve_url(db_arg)
    if resolved.is_default:
        await upgrade(resolved.url)
    else:
        await check_current(resolved.url)
    return resolved.url


def _advertiser(host: str, port: int) -> Any:
    """Lifespan hook: advertise ``_plantsync._tcp.local.`` so gateways with
    ``url = "auto"`` find this service. A service bound to loopback advertises on loopback
    only, otherwise on every interface, unless $PLANTSYNC_ZEROCONF_INTERFACES says which
    (``off``: none). A LAN without multicast is not an error: the service runs, and the
    log says so."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    interfaces = interfaces_from_env(default=["127.0.0.1"] if loopback else InterfaceChoice.All)

    @contextlib.asynccontextmanager
    async def hook(_app: Any) -> Any:
        log = structlog.get_logger(__name__)
        if interfaces == []:
            yield
            return
        adv = Advertiser(CLOUD_SERVICE, "plantsync-cloud", port,
                         properties={"scheme": "http", "path": ""}, interfaces=interfaces)
        try:
            await adv.__aenter__()
        except Exception as exc:
            log.warning("zeroconf_advertise_failed", error=str(exc))
            yield
            return
        try:
            yield
        finally:
            await adv.__aexit__(None, None, None)

    return hook


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in (os.environ.get(name) or "").split(",") if part.strip()]


def _tls_and_proxies(args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn's options for HTTPS and forwarded headers. uvicorn by default believes
    X-Forwarded-For from 127.0.0.1, so anything on the host (or a proxy passing a
    client's header through) could pick the address the login limit counts: we believe
    forwarded headers only from ``--trusted-proxy``. Raises CloudError for a bad
    address or a key without a certificate (and the reverse)."""
    for proxy in args.trusted_proxy:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise CloudError(f"--trusted-proxy {proxy!r} is not an IP address or network "
                             "(e.g. 127.0.0.1 or 10.0.0.0/8)") from None
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise CloudError("--ssl-certfile and --ssl-keyfile go together (HTTPS needs both)")
    for option in ("ssl_certfile", "ssl_keyfile"):
        path = getattr(args, option)
        if path and not Path(path).is_file():
            raise CloudError(f"--{option.replace('_', '-')} {path}: no such file")
    return {"proxy_headers": bool(args.trusted_proxy),
            "forwarded_allow_ips": list(args.trusted_proxy) or None,
            "ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}


def _serve(args: argparse.Namespace) -> int:
    network = _tls_and_proxies(args)
    url = _run(_prepare(args.db))
    hooks: list[Any] = []
    if not args.no_zeroconf:
        hooks.append(_advertiser(args.host, args.port))
    app = create_app(url, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                     lifespan_hooks=hooks, run_jobs=True,
                     docs_require_login=args.docs == "login")
    structlog.get_logger(__name__).info(
        "serving", host=args.host, port=args.port, https=bool(args.ssl_certfile),
        trusted_proxies=args.trusted_proxy or None, docs=args.docs)
    # uvicorn.run, with a server that tells systemd READY/WATCHDOG/STOPPING (cloud/core/systemd.py)
    server = NotifyingServer(uvicorn.Config(
        app, host=args.host, port=args.port, log_config=None, log_level=args.log_level,
        access_log=args.log_level == "debug", **network))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 3   # 3: uvicorn's STARTUP_FAILURE


async def _migrate(args: argparse.Namespace) -> int:
    url = resolve_url(args.db).url
    before = await upgrade(url)
    head = head_revision()
    print(f"database at revision {head}" + ("" if before == head else
                                           f" (was {before or 'empty'})"))
    return 0


def _password_from_stdin() -> str:
    """One line of stdin (without its line break); checked before the database is
    touched. Raises UserError for an empty or short password."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    check_password(password)
    return password


async def _admin_users(args: argparse.Namespace) -> int:
    check_user_name(args.name)
    password = "" if args.admin_command == "create-token" else _password_from_stdin()
    url = await _prepare(args.db)
    actor = "cli"
    async with Database(url) as db:
        if args.admin_command == "create-user":
            await create_user(db, args.name, args.role, password, actor=actor)
            print(f"created user {args.name} ({args.role})")
        elif args.admin_command == "set-password":
            await set_password(db, args.name, password, actor=actor)
            print(f"new password set for {args.name}; their sessions ended")
        else:
            token_id, token = await create_api_token(db, args.name, args.token_name,
                                                     actor=actor)
            print(f"API token {token_id} for user {args.name}; it follows, shown only this "
                  "once:")
            print(token)
    return 0


async def _admin(args: argparse.Namespace) -> int:
    if args.admin_command in ("create-user", "set-password", "create-token"):
        return await _admin_users(args)
    check_gateway_id(args.gateway_id)
    url = await _prepare(args.db)
    async with Database(url) as db:
        if args.admin_command == "create-gateway":
            token = await create_gateway(db, args.gateway_id, rotate=args.rotate)
            verb = "new token for" if args.rotate else "created"
            print(f"{verb} gateway {args.gateway_id}; its token follows, shown only this "
                  "once (put it in the gateway's token_file):")
            print(token)
        else:
            when = await revoke_gateway(db, args.gateway_id)
            print(f"gateway {args.gateway_id} revoked at {clock.iso(when)}")
    return 0


def _import(args: argparse.Namespace) -> int:
    """Read the file and check the options before touching the database."""
    zone = plant.zone(args.tz) if args.tz else None
    if args.tz and zone is None:
        print(f"plantsync-cloud: error: --tz: unknown time zone {args.tz!r} "
              "(e.g. Asia/Shanghai)", file=sys.stderr)
        return 1
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"plantsync-cloud: error: {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    return _run(_import_data(args, data, zone))


async def _import_data(args: argparse.Namespace, data: bytes, zone: Any) -> int:
    url = await _prepare(args.db)
    async with Database(url) as db:
        if zone is None:
            async with db.sessions() as session:
                zone = await plant.timezone(session)
        try:
            result = await import_file(db, args.as_user, args.kind, data, tz=zone)
        except TableImportError as exc:
            print(f"plantsync-cloud: error: {args.file}: nothing imported; "
                  f"{len(exc.errors)} problem(s):", file=sys.stderr)
            for problem in exc.errors:
                print(f"  {problem}", file=sys.stderr)
            return 1
        except DomainError as exc:
            print(f"plantsync-cloud: error: {args.file}: nothing imported; {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result.as_dict(), ensure_ascii=False))
    return 0


async def _mqtt_ingest(args: argparse.Namespace) -> int:
    try:
        parse_broker_url(args.broker)
    except ValueError as exc:
        print(f"plantsync-cloud: error: --broker: {exc}", file=sys.stderr)
        return 1
    await run_mqtt_ingest(args.broker, await _prepare(args.db), group=args.group)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "warning" if args.command == "admin"
                              else "info"))
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "migrate":
            return _run(_migrate(args))
        if args.command == "mqtt-ingest":
            return _run(_mqtt_ingest(args))
        if args.command == "import":
            return _import(args)
        return _run(_admin(args))
    except CloudError as exc:
        print(f"plantsync-cloud: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # PostgreSQL not reachable, ...
        print(f"plantsync-cloud: error: cannot reach the database: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:  # a SQLite file in a missing or read-only directory, ...
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"plantsync-cloud: error: database {_db_for_message(args)}: {detail} (does it "
              "exist, and may this user write to it and its directory?)", file=sys.stderr)
        return 1


def _db_for_message(args: argparse.Namespace) -> str:
    try:
        return str(make_url(resolve_url(getattr(args, "db", None)).url)
                   .render_as_string(hide_password=True))
    except CloudError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
