"""The `sfd` command line: `sfd [--config FILE] COMMAND`. Exit 2 for a bad config or usage."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import os
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from importlib import metadata, resources
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import msgspec
from rich.console import Console
from rich.table import Table

from sfd import __version__
from sfd.config import (
    CONFIG_ENV,
    Config,
    ConfigError,
    load_config,
    parse_config,
    resolve_secret,
)
from sfd.connectors.registry import ConnectorUnavailable, open_marketplace
from sfd.daemon.admin import AdminUnavailable, admin_call
from sfd.daemon.carriers import CarrierView, carrier_view
from sfd.daemon.push import PushError, retry_push
from sfd.daemon.retention import anonymize
from sfd.daemon.runtime import open_storage, run_daemon, sync_config
from sfd.domain import (
    MISSING_PERSONAL_DATA,
    EventSource,
    OperationKind,
    OrderStatus,
    StoredOrder,
    TicketState,
)
from sfd.domain.clock import utcnow
from sfd.domain.documents import (
    DOCUMENT_TYPES,
    MAX_DOCUMENT_BYTES,
    Document,
    DocumentRefused,
    check_document,
)
from sfd.domain.rules import (
    Payload,
    ReasonPayload,
    ShipPayload,
    document_payload,
    tracking_numbers,
)
from sfd.logs import configure_logging
from sfd.storage import (
    OperationRequest,
    OrderFilter,
    Storage,
    StorageError,
    channel_lease,
    is_postgres_url,
    maintenance,
)
from sfd.storage.copy import copy_database
from sfd.storage.maintenance import CheckReport

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
#: The API token the `orders` commands act as when `--token` is not given.
TOKEN_ENV = "SFD_TOKEN"


class CommandError(Exception):
    """A command that cannot do what was asked; the message says why."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"sfd: {message}\n")


#: The entry-point group through which other packages add commands (the sandbox adds `demo`).
COMMANDS_GROUP = "sfd.commands"
_Commands = argparse._SubParsersAction  # the type `add_subparsers` returns


@dataclasses.dataclass(frozen=True, kw_only=True)
class Command:
    """A command another package contributes through the `sfd.commands` entry points.

    The daemon never imports its contributors: `sfd demo` comes from the sandbox this way."""

    help: str
    #: Runs the command on the loaded config and the parsed arguments; returns the exit code.
    run: Callable[[Config, argparse.Namespace], Awaitable[int]]
    #: Adds the command's own arguments to its parser.
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    #: Without --config or $SFD_CONFIG, the command runs on the embedded default config.
    default_config: bool = False
    #: Its logs go to stdout, like `sfd run`'s, rather than to stderr.
    serves: bool = False


def _contributed() -> dict[str, Command]:
    """The commands installed packages contribute, by name; one that cannot load is skipped."""
    found: dict[str, Command] = {}
    for entry in sorted(metadata.entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            command = entry.load()
        except Exception as exc:  # a broken contributor must not take the other commands down
            sys.stderr.write(f"sfd: command {entry.name!r} ({entry.value}) cannot load: {exc}\n")
            continue
        if not isinstance(command, Command):
            sys.stderr.write(f"sfd: command {entry.name!r} ({entry.value}) is not a Command\n")
            continue
        found[entry.name] = command
    return found


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sfd", description="A self-hosted marketplace order hub.")
    parser.add_argument(
        "--config", metavar="FILE", help=f"the TOML config (default: ${CONFIG_ENV})"
    )
    parser.add_argument("--version", action="version", version=f"sfd {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    commands.add_parser("run", help="run the daemon")
    for name, command in _contributed().items():
        if name in _BUILT_IN:
            continue  # a contributor cannot replace a built-in command
        contributed = commands.add_parser(name, help=command.help)
        if command.arguments is not None:
            command.arguments(contributed)
        contributed.set_defaults(contributed=command)
    commands.add_parser("check-config", help="validate the config and resolve its secrets")
    init = commands.add_parser("init-config", help="write the embedded default config")
    init.add_argument("path", help="where to write it; an existing file is left alone")
    _add_db(commands)
    _add_token(commands)
    channels = commands.add_parser("channels", help="the channels and their poll state")
    channels.add_argument("--json", action="store_true")
    channel_actions = channels.add_subparsers(
        dest="channels_command", metavar="ACTION", parser_class=_Parser
    )
    poll = channel_actions.add_parser("poll", help="ask the running daemon to poll now")
    poll.add_argument("name")
    carriers = channel_actions.add_parser(
        "carriers", help="the marketplace's carrier codes and the carrier mapping in force"
    )
    carriers.add_argument("name")
    carriers.add_argument("--json", action="store_true")
    _add_orders(commands)
    shops = commands.add_parser("shops", help="the push-mode shops and their sync state")
    shops.add_argument("--json", action="store_true")
    _add_operations(commands)
    return parser


_BUILT_IN = frozenset(
    (
        "run",
        "check-config",
        "init-config",
        "db",
        "token",
        "channels",
        "orders",
        "shops",
        "operations",
    )
)


def _add_db(commands: _Commands[_Parser]) -> None:
    db = commands.add_parser("db", help="the database").add_subparsers(
        dest="db_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    db.add_parser("migrate", help="apply the pending migrations")
    backup = db.add_parser("backup", help="copy the database online, verified, to a new file")
    backup.add_argument("path", help="the file to write; an existing one needs --force")
    backup.add_argument("--force", action="store_true", help="replace an existing file")
    db_check = db.add_parser(
        "check", help="integrity and foreign key checks, and the rows in each table"
    )
    db_check.add_argument("--json", action="store_true")
    anonymize = db.add_parser(
        "anonymize",
        help="erase now the personal data of orders closed for [daemon] pii_retention",
    )
    anonymize.add_argument(
        "--dry-run", action="store_true", help="count what would be erased; change nothing"
    )
    anonymize.add_argument("--json", action="store_true")
    copy = db.add_parser(
        "copy",
        help="copy a whole SQLite database into an empty PostgreSQL database, verified",
        description="Copy every table of the SQLite file into the empty PostgreSQL database, "
        "then compare row counts and checksums. Stop `sfd run` on the file first. Needs no "
        "config.",
    )
    copy.add_argument("source", metavar="SQLITE_PATH")
    copy.add_argument("target", metavar="POSTGRES_URL", help="postgresql://USER@HOST:PORT/DB")
    copy.add_argument(
        "--password",
        metavar="SECRET",
        help="the target's password as env:NAME, file:PATH or credential:NAME "
        "(default: PGPASSWORD or ~/.pgpass)",
    )
    copy.add_argument("--json", action="store_true")


def _add_token(commands: _Commands[_Parser]) -> None:
    token = commands.add_parser("token", help="API tokens").add_subparsers(
        dest="token_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    create = token.add_parser("create", help="create a token; prints only the token")
    create.add_argument("--store", type=int, required=True, metavar="ID")
    create.add_argument("--name")
    listing = token.add_parser("list", help="list the tokens (never their values)")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    listing.add_argument("--json", action="store_true")
    revoke = token.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")


def _add_orders(commands: _Commands[_Parser]) -> None:
    orders = commands.add_parser("orders", help="orders").add_subparsers(
        dest="orders_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    olist = orders.add_parser("list", help="list orders")
    olist.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in OrderStatus],
        help="repeat for several",
    )
    olist.add_argument("--channel")
    olist.add_argument("--store", type=int, metavar="ID")
    olist.add_argument("--unacknowledged", action="store_true")
    olist.add_argument("--late", action="store_true")
    olist.add_argument("--limit", type=int, default=100)
    olist.add_argument("--json", action="store_true")
    show = orders.add_parser("show", help="one order with its events")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    ship = orders.add_parser("ship", help="report a shipment, forwarded to the marketplace")
    ship.add_argument("id", type=int)
    ship.add_argument(
        "--carrier", default="", help="the carrier; optional unless the channel requires tracking"
    )
    ship.add_argument("--tracking-number", default="")
    ship.add_argument("--tracking-url", default="")
    ship.add_argument(
        "--item",
        action="append",
        default=[],
        metavar="ID:QTY",
        help="for a partial shipment: an order item id and its quantity; repeat",
    )
    upload = orders.add_parser(
        "upload", help="attach a document (an invoice) to the order, sent to its marketplace"
    )
    upload.add_argument("id", type=int)
    upload.add_argument("file", type=Path, help="a PDF, JPEG or PNG file of at most 10 MiB")
    upload.add_argument("--type", default="invoice", choices=sorted(DOCUMENT_TYPES))
    for action in ("accept", "refuse", "cancel"):
        simple = orders.add_parser(action, help=f"{action} the order on its marketplace")
        simple.add_argument("id", type=int)
    retry_push = orders.add_parser(
        "retry-push", help="push an order the shop refused again, at the next sync"
    )
    retry_push.add_argument("id", type=int)
    for action_parser in orders.choices.values():
        action_parser.add_argument(
            "--token",
            default=None,
            help=f"act as this API token: only its store's orders (default: ${TOKEN_ENV})",
        )


def _add_operations(commands: _Commands[_Parser]) -> None:
    operations = commands.add_parser("operations", help="the operations outbox").add_subparsers(
        dest="operations_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    olist_ops = operations.add_parser("list", help="operations, newest first")
    olist_ops.add_argument("--state", choices=[s.value for s in TicketState])
    olist_ops.add_argument("--limit", type=int, default=100)
    olist_ops.add_argument("--json", action="store_true")
    retry = operations.add_parser("retry", help="make a failed operation due again")
    retry.add_argument("id", type=int)


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get(CONFIG_ENV)
    contributed: Command | None = getattr(args, "contributed", None)
    if not path and contributed is not None and contributed.default_config:
        text = resources.files("sfd").joinpath("default.toml").read_text("utf-8")
        return parse_config(text, "<embedded default config>")
    if not path:
        raise ConfigError("sfd", [("", f"no config given: use --config FILE or set {CONFIG_ENV}")])
    return load_config(path)


_encoder = msgspec.json.Encoder(decimal_format="number")


def _print_json(value: Any) -> None:
    sys.stdout.write(_encoder.encode(value).decode() + "\n")


def _console() -> Console:
    # Piped into grep or a file, a table keeps one row per line instead of wrapping at 80.
    return Console() if sys.stdout.isatty() else Console(width=240)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


_R = TypeVar("_R")


def _list(
    rows: Sequence[_R], as_json: bool, columns: Sequence[str], cells: Callable[[_R], Sequence[str]]
) -> int:
    """Print `rows` as JSON, or as a table of `columns` filled by `cells(row)`."""
    if as_json:
        _print_json(rows)
        return EXIT_OK
    table = Table(*columns)
    for row in rows:
        table.add_row(*cells(row))
    _console().print(table)
    return EXIT_OK


async def _with_storage(config: Config, action: Callable[[Storage], Awaitable[int]]) -> int:
    storage = await open_storage(config, readers=1)
    try:
        await sync_config(storage, config, utcnow())
        return await action(storage)
    finally:
        await storage.close()


async def _token(args: argparse.Namespace, storage: Storage) -> int:
    if args.token_command == "create":
        _name, token = await storage.tokens.create(args.store, args.name, utcnow())
        sys.stdout.write(token + "\n")
    elif args.token_command == "revoke":
        await storage.tokens.revoke(args.name, utcnow())
        sys.stderr.write(f"sfd: token {args.name!r} revoked\n")
    else:
        tokens = await storage.tokens.all(include_revoked=args.all)
        columns = ("name", "store", "created", "last used", "revoked")
        return _list(
            tokens,
            args.json,
            columns,
            lambda t: (
                t.name,
                str(t.store_id),
                *map(_when, (t.created_at, t.last_used_at, t.revoked_at)),
            ),
        )
    return EXIT_OK


async def _channels(args: argparse.Namespace, storage: Storage) -> int:
    if args.channels_command == "poll":
        try:
            await admin_call(storage.path.resolve(), f"/channels/{args.name}/poll")
        except AdminUnavailable as exc:
            raise CommandError(str(exc)) from None
        sys.stderr.write(f"sfd: channel {args.name!r} is polling now\n")
        return EXIT_OK
    leases = await storage.leases.all()
    now = utcnow()
    channels = []
    for state in await storage.channels.states():
        lease = leases.get(channel_lease(state.id))
        holder = lease.holder if lease is not None and lease.expires_at > now else None
        channels.append(msgspec.structs.replace(state, held_by=holder))
    columns = ("name", "connector", "auth", "last poll", "last success", "last error")
    return _list(
        channels,
        args.json,
        (*columns, "orders", "pending ops", "held by"),
        lambda c: (
            *(c.name, c.connector, c.auth_state, _when(c.last_poll_at)),
            *(_when(c.last_success_at), c.last_error or "-"),
            *(str(c.orders), str(c.pending_operations), c.held_by or "-"),
        ),
    )


async def _channel_carriers(args: argparse.Namespace, config: Config) -> int:
    """`sfd channels carriers NAME`: the connector is opened here, from the config, rather
    than asking the daemon: it works with no daemon running, and Mirakl's SH21 is one read."""
    channel = next((c for c in config.channels if c.name == args.name), None)
    if channel is None:
        raise CommandError(f"no channel named {args.name!r} in {config.source}")
    try:
        connector = open_marketplace(
            channel.name, channel.connector, config.channel_settings[channel.name]
        )
    except ConnectorUnavailable as exc:
        raise CommandError(str(exc)) from None
    try:
        view = await carrier_view(channel, connector)
    finally:
        await connector.aclose()
    if args.json:
        _print_json(view)
    else:
        _print_carriers(view)
    return EXIT_OK


def _print_carriers(view: CarrierView) -> None:
    console = _console()
    mapping = Table("shop carrier", "marketplace code", "source", "listed")
    for row in view.mapping:
        listed = "-" if row.listed is None else ("yes" if row.listed else "no")
        mapping.add_row(row.name, row.code or "-", row.source.value, listed)
    console.print(f"channel {view.channel} ({view.connector}): carrier mapping", markup=False)
    console.print(mapping)
    if view.listed is None:
        console.print(f"warning: {view.unavailable}", markup=False)
        return
    listing = Table("code", "label")
    for known in view.listed:
        listing.add_row(known.code, known.label)
    console.print(f"{view.connector}'s carriers ({len(view.listed)})", markup=False)
    console.print(listing)


async def _shops(args: argparse.Namespace, storage: Storage) -> int:
    columns = ("name", "connector", "store", "auth", "last sync", "last success", "last error")
    return _list(
        await storage.pushes.states(),
        args.json,
        (*columns, "pushed", "refused", "unsure", "awaiting tracking"),
        lambda s: (
            *(s.name, s.connector, str(s.store_id), s.auth_state),
            *(_when(s.last_sync_at), _when(s.last_success_at), s.last_error or "-"),
            *map(str, (s.pushed, s.rejected, s.pending, s.waiting_tracking)),
        ),
    )


async def _retry_push(args: argparse.Namespace, storage: Storage) -> int:
    """Clear a refused push so the next sync takes the order; wake the daemon if it runs."""
    order = await storage.orders.get(args.id, details=False)
    if order is None:
        raise CommandError(f"no order with id {args.id}")
    shops = [s.name for s in await storage.pushes.states() if s.store_id == order.store_id]
    if not shops:
        raise CommandError(f"store {order.store_id} has no shop in push mode ([[shops]])")
    try:
        said = await retry_push(storage, order.id, EventSource.CLI, utcnow(), actor=args.actor)
    except PushError as exc:
        raise CommandError(str(exc)) from None
    for shop in shops:
        with contextlib.suppress(AdminUnavailable):
            await admin_call(storage.path.resolve(), f"/channels/{shop}/poll")
    sys.stderr.write(f"sfd: {said}\n")
    return EXIT_OK


def _order_rows(orders: Sequence[StoredOrder]) -> Table:
    table = Table(
        "id", "channel", "reference", "status", "ship by", "acknowledged", "store ref", "total"
    )
    for o in orders:
        table.add_row(
            str(o.id),
            o.channel,
            o.reference,
            f"{o.status.value} (waiting for payment)" if o.payment_pending else o.status.value,
            _when(o.latest_ship_date),
            _when(o.acknowledged_at),
            o.store_reference or "-",
            f"{o.total_amount} {o.currency}",
        )
    return table


async def _token_scope(args: argparse.Namespace, storage: Storage) -> int | None:
    """The store an API token (`--token` or $SFD_TOKEN) limits the command to; None without.

    Sets `args.actor`, who the orders' events name: the token's name, else the system user."""
    args.actor = _system_user()
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        return None
    identity = await storage.tokens.verify(token.strip())
    if identity is None:
        raise CommandError("the token is not valid (or was revoked)")
    args.actor = identity.name
    return identity.store_id


def _system_user() -> str | None:
    """The login running the command, for the order's trail."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no LOGNAME: a container's stray uid
        return None


async def _orders(args: argparse.Namespace, storage: Storage) -> int:
    scope = await _token_scope(args, storage)
    if (
        scope is not None
        and getattr(args, "id", None) is not None
        and await storage.orders.get(args.id, store_id=scope, details=False) is None
    ):
        # Another store's order is exactly as absent as one that does not exist.
        raise CommandError(f"no order with id {args.id}")
    if scope is not None and getattr(args, "store", None) not in (None, scope):
        sys.stderr.write(f"sfd: --store {args.store}: the token is for store {scope} only\n")
        return EXIT_USAGE
    if args.orders_command == "show":
        return await _show_order(args, storage, scope)
    if args.orders_command == "retry-push":
        return await _retry_push(args, storage)
    if args.orders_command in ("ship", "accept", "refuse", "cancel", "upload"):
        return await _operate(args, storage)
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    query = OrderFilter(
        store_id=args.store if scope is None else scope,
        statuses=[OrderStatus(s) for s in args.status] if args.status else None,
        channel=args.channel,
        acknowledged=False if args.unacknowledged else None,
        late_at=utcnow() if args.late else None,
        limit=args.limit,
    )
    orders = await storage.orders.find(query)
    if args.json:
        _print_json(orders)
    else:
        _console().print(_order_rows(orders))
    return EXIT_OK


async def _show_order(args: argparse.Namespace, storage: Storage, scope: int | None) -> int:
    """`sfd orders show`: the order, its shipment, items, events and tickets."""
    order = await storage.orders.get(args.id, store_id=scope)
    if order is None:
        raise CommandError(f"no order with id {args.id}")
    operations = await storage.operations.for_order(order.id)
    documents = await storage.documents.for_order(order.id)
    if args.json:
        _print_json(
            {
                **msgspec.structs.asdict(order),
                "operations": operations,
                "documents": [dataclasses.asdict(d) for d in documents],
            }
        )
        return EXIT_OK
    console = _console()
    console.print(_order_rows([order]))
    if order.carrier or order.tracking_number or order.tracking_link:
        shipment = Table("carrier", "tracking numbers", "tracking link")
        shipment.add_row(
            order.carrier or "-",
            ", ".join(tracking_numbers(order.tracking_number)) or "-",
            order.tracking_link or "-",
        )
        console.print(shipment)
    missing = order.additional_fields.get(MISSING_PERSONAL_DATA)
    if missing:
        console.print(f"warning: {missing}", markup=False)
    items = Table("sku", "name", "qty", "price")
    for item in order.items:
        items.add_row(item.reference, item.name, str(item.quantity), str(item.price))
    console.print(items)
    events = Table("at", "source", "by", "event", "from", "to", "message")
    for e in order.events:
        events.add_row(
            _when(e.at),
            e.source,
            e.actor or "",
            e.kind,
            e.from_status or "",
            e.to_status or "",
            e.message,
        )
    console.print(events)
    tickets = Table("operation", "kind", "state", "source", "attempts", "marketplace says")
    for t in operations:
        tickets.add_row(
            str(t.operation_id),
            t.kind.value,
            t.state.value,
            t.source,
            str(t.attempts),
            t.reason or "",
        )
    console.print(tickets)
    if documents:
        table = Table("document", "type", "size", "sha256", "ticket", "state", "marketplace says")
        for d in documents:
            table.add_row(
                d.file_name + (" (erased)" if d.erased else ""),
                d.type,
                f"{d.size} B",
                d.sha256[:16],
                d.ticket_id,
                d.state.value + (", confirmed" if d.confirmed_at else ""),
                d.reason or "",
            )
        console.print(table)
    return EXIT_OK


def _ship_payload(args: argparse.Namespace) -> ShipPayload:
    items = []
    for text in args.item:
        item, _, quantity = text.partition(":")
        if not (item.isdigit() and quantity.isdigit()):
            raise CommandError(f"--item {text!r}: expected ITEM_ID:QUANTITY, e.g. 4401:2")
        items.append((int(item), int(quantity)))
    return ShipPayload(
        carrier=args.carrier,
        tracking_number=args.tracking_number,
        tracking_link=args.tracking_url,
        items=tuple(items),
    )


def _read_document(args: argparse.Namespace) -> Document:
    """The file named by `sfd orders upload`, checked as the API checks one."""
    path: Path = args.file
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise DocumentRefused(
                str(path), f"is {size} bytes; at most {MAX_DOCUMENT_BYTES} (10 MiB) a file"
            )
        return check_document(path.name, path.read_bytes(), args.type)
    except OSError as exc:
        raise CommandError(f"{path}: cannot be read: {exc.strerror}") from None
    except DocumentRefused as exc:
        raise CommandError(f"{path}: {exc.message}; nothing was stored") from None


async def _operate(args: argparse.Namespace, storage: Storage) -> int:
    """Submit an operation on one order, by the same rules and outbox as the API."""
    order = await storage.orders.get(args.id, details=False)
    if order is None:
        raise CommandError(f"no order with id {args.id}")
    document = _read_document(args) if args.orders_command == "upload" else None
    kind = OperationKind.UPLOAD_DOCUMENT if document else OperationKind(args.orders_command)
    payload: Payload = (
        document_payload(document)
        if document
        else _ship_payload(args)
        if kind == OperationKind.SHIP
        else ReasonPayload()
    )
    batch = await storage.operations.submit(
        order.store_id,
        kind,
        [OperationRequest(payload=payload, order_id=order.id, document=document)],
        EventSource.CLI,
        utcnow(),
        args.actor,
    )
    [ticket] = batch.tickets
    await _wake_daemon(storage)
    if ticket.state == TicketState.FAILED:
        raise CommandError(f"{kind.value} of order {order.reference} refused: {ticket.reason}")
    sys.stderr.write(
        f"sfd: {kind.value} of order {order.reference}: ticket {ticket.id} is "
        f"{ticket.state.value}\n"
    )
    return EXIT_OK


async def _wake_daemon(storage: Storage) -> None:
    # The running daemon finds new operations within 2 s anyway; this makes it at once.
    with contextlib.suppress(AdminUnavailable):
        await admin_call(storage.path.resolve(), "/operations/wake")


async def _operations(args: argparse.Namespace, storage: Storage) -> int:
    if args.operations_command == "retry":
        try:
            ticket = await storage.operations.retry(
                args.id, EventSource.CLI, utcnow(), _system_user()
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        await _wake_daemon(storage)
        sys.stderr.write(
            f"sfd: operation {args.id} ({ticket.kind.value} of order "
            f"{ticket.order_reference}) is due again\n"
        )
        return EXIT_OK
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    states = [TicketState(args.state)] if args.state else None
    _, tickets = await storage.operations.tickets(None, states=states, limit=args.limit)
    columns = ("id", "kind", "state", "channel", "order", "source", "attempts", "created")
    return _list(
        tickets,
        args.json,
        (*columns, "last error"),
        lambda t: (
            *(str(t.operation_id), t.kind.value, t.state.value, t.channel or "-"),
            *(t.order_reference or "-", t.source, str(t.attempts), _when(t.created_at)),
            t.reason or "",
        ),
    )


def _report_check(report: CheckReport, as_json: bool) -> int:
    if as_json:
        _print_json({**dataclasses.asdict(report), "ok": report.ok})
    else:
        table = Table("table", "rows")
        for name, rows in report.tables.items():
            table.add_row(name, str(rows))
        console = _console()
        console.print(table)
        console.print(
            f"schema version {report.schema_version} (this sfd knows {report.known_version}); "
            f"checked by {report.method}"
        )
        for line in report.integrity[:20] + report.foreign_keys[:20]:
            console.print(f"integrity: {line}", markup=False)
    if not report.ok:
        sys.stderr.write(f"sfd: database {report.path} failed its check\n")
    return EXIT_OK if report.ok else EXIT_FAILURE


async def _maintenance(args: argparse.Namespace, config: Config) -> int:
    """`db backup` and `db check`: they read the database only, never migrating it."""
    if config.database_url is not None:
        if args.db_command == "check":
            report = await maintenance.check_postgres(
                config.database_url, password=config.database_password
            )
            return _report_check(report, args.json)
        sys.stderr.write(
            f"sfd: database {config.database_url} is PostgreSQL: `sfd db backup` copies SQLite "
            "files only. Back it up with the server's own tools: "
            f"pg_dump --format=custom --file={args.path} '{config.database_url}' "
            "(or continuous archiving for point-in-time recovery); nothing was written\n"
        )
        return EXIT_FAILURE
    if args.db_command == "check":
        return _report_check(await maintenance.check(config.database), args.json)
    result = await maintenance.backup(config.database, args.path, force=args.force)
    orders = result.check.tables.get("orders", 0)
    sys.stderr.write(
        f"sfd: backed up {config.database} to {result.path} ({result.size} bytes, "
        f"{orders} orders, schema version {result.check.schema_version}); integrity ok\n"
    )
    return EXIT_OK


async def _anonymize(args: argparse.Namespace, config: Config, storage: Storage) -> int:
    """`db anonymize`: the retention's erasure, now; counts only, never the erased data."""
    retention = timedelta(seconds=config.daemon.pii_retention)
    report = await anonymize(
        storage,
        utcnow,
        retention,
        dry_run=args.dry_run,
        source=EventSource.CLI,
        actor=_system_user(),
    )
    if args.json:
        _print_json({**dataclasses.asdict(report), "retention_seconds": retention.total_seconds()})
        return EXIT_OK
    counts = (
        f"{report.addresses} addresses, {report.payloads} raw payloads, "
        f"{report.fields} orders' additional fields"
    )
    before = _when(report.cutoff)
    if args.dry_run:
        sys.stderr.write(
            f"sfd: dry run: {report.orders} orders closed before {before} UTC would have their "
            f"personal data erased ({counts}); nothing was changed\n"
        )
        return EXIT_OK
    hooks = "".join(f", {count} {name}" for name, count in report.hooks.items())
    sys.stderr.write(
        f"sfd: erased the personal data of {report.orders} orders closed before {before} UTC "
        f"({counts}, {report.api_documents} API documents{hooks})\n"
    )
    if report.checkpointed is False:
        sys.stderr.write(
            "sfd: the WAL could not be truncated (a reader held it): erased pages may remain "
            "in it until the next run; take backups after that\n"
        )
    return EXIT_OK


async def _migrate(storage: Storage) -> int:
    version = await storage.schema_version()
    sys.stderr.write(f"sfd: database {storage.where} is at schema version {version}\n")
    return EXIT_OK


def _copy(args: argparse.Namespace) -> int:
    """`sfd db copy SQLITE_PATH POSTGRES_URL`."""
    if not is_postgres_url(args.target):
        raise CommandError(f"the target {args.target!r} is not a postgresql:// URL")
    if urllib.parse.urlsplit(args.target).password is not None:
        raise CommandError(
            "the target URL holds a password, which other users can read in the process "
            "list; give it with --password env:NAME (or file:PATH), PGPASSWORD or ~/.pgpass"
        )
    password = None
    if args.password is not None:
        try:
            password, _ = resolve_secret(args.password, os.environ)
        except ValueError as exc:
            raise CommandError(f"--password: {exc}") from None
    configure_logging("auto", "info", frozenset({password} if password else ()), sys.stderr)

    def progress(table: str, rows: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\rsfd: copying {table}: {rows} rows ")

    report = anyio.run(
        lambda: copy_database(Path(args.source), args.target, password=password, progress=progress)
    )
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    if args.json:
        _print_json(
            {
                "source": report.source,
                "target": report.target,
                "schema_version": report.schema_version,
                "seconds": round(report.seconds, 3),
                "tables": [dataclasses.asdict(t) for t in report.tables],
            }
        )
    else:
        table = Table("table", "rows", "checksum (sha-256 sum)")
        for t in report.tables:
            table.add_row(t.name, str(t.rows), t.checksum[:16])
        _console().print(table)
    sys.stderr.write(
        f"sfd: copied {report.source} to {report.target}: {report.rows} rows in "
        f"{len(report.tables)} tables, {report.seconds:.1f} s; counts and checksums match. "
        f'Point [daemon] database at "{report.target}" and start sfd.\n'
    )
    return EXIT_OK


def _serves(args: argparse.Namespace) -> bool:
    contributed: Command | None = getattr(args, "contributed", None)
    return contributed is not None and contributed.serves


def main(argv: Sequence[str] | None = None) -> int:
    """The `sfd` command."""
    args = _parser().parse_args(argv)
    if args.command == "init-config":
        target = Path(args.path)
        if target.exists():
            sys.stderr.write(f"sfd: {target} exists; left as is\n")
            return EXIT_OK
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(resources.files("sfd").joinpath("default.toml").read_text("utf-8"))
        sys.stderr.write(f"sfd: wrote {target}\n")
        return EXIT_OK
    if args.command == "db" and args.db_command == "copy":
        try:
            return _copy(args)
        except (CommandError, StorageError) as exc:
            sys.stderr.write(f"sfd: {exc}\n")
            return EXIT_FAILURE
    try:
        config = _config(args)
    except ConfigError as exc:
        for line in exc.lines():
            sys.stderr.write(line + "\n")
        return EXIT_USAGE
    configure_logging(
        config.daemon.log_format,
        config.daemon.log_level,
        config.secrets,
        stream=sys.stdout if args.command == "run" or _serves(args) else sys.stderr,
    )
    handlers: dict[str, Callable[[Storage], Awaitable[int]]] = {
        "db": lambda s: (
            _anonymize(args, config, s) if args.db_command == "anonymize" else _migrate(s)
        ),
        "token": lambda s: _token(args, s),
        "channels": lambda s: _channels(args, s),
        "orders": lambda s: _orders(args, s),
        "operations": lambda s: _operations(args, s),
        "shops": lambda s: _shops(args, s),
    }
    try:
        if args.command == "check-config":
            sys.stderr.write(
                f"sfd: {config.source} is valid: {len(config.stores)} stores, "
                f"{len(config.channels)} channels, {len(config.shops)} shops\n"
            )
            return EXIT_OK
        if args.command == "run":
            return anyio.run(run_daemon, config)
        if args.command == "channels" and args.channels_command == "carriers":
            return anyio.run(_channel_carriers, args, config)
        if args.command == "db" and args.db_command in ("backup", "check"):
            return anyio.run(_maintenance, args, config)
        contributed: Command | None = getattr(args, "contributed", None)
        if contributed is not None:
            return anyio.run(contributed.run, config, args)
        return anyio.run(_with_storage, config, handlers[args.command])
    except (CommandError, StorageError) as exc:
        sys.stderr.write(f"sfd: {exc}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
