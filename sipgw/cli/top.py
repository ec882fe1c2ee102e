"""``sipgw top``: a live dashboard of the running proxy, redrawn every interval.

Each round asks the control socket for the statistics (``stats.fetch``; the load panel is
its ``load:`` gauges and the share overload control refuses, sipgw-stats(7)), the active
dialogs, and, when the proxy serves them, the dispatcher destinations, the bans, the open
connections by transport (``core.connections``) and the workers (``core.workers``: a
service with several worker processes); rates are the
change of a counter since the previous round. When the proxy goes away the dashboard says
so and keeps trying, so it picks a restarted proxy up again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sipgw.cli.app import App, pass_app
from sipgw.cli.connect import socket_path
from sipgw.cli.options import config_option
from sipgw.rpc.client import Client, ProtocolError, RemoteError, Unreachable

RATES = {
    "requests/s": "core.rcv_requests",
    "replies/s": "core.rcv_replies",
    "forwarded req/s": "core.fwd_requests",
    "forwarded rpl/s": "core.fwd_replies",
    "dropped/s": "core.drop_requests",
    "kernel drops/s": "load.udp_kernel_drops",  # UDP queue full: sipgw never saw them
    "bad msg/s": "core.bad_msg",
    "1xx/s": "core.rcv_replies_1xx",
    "2xx/s": "core.rcv_replies_2xx",
    "3xx/s": "core.rcv_replies_3xx",
    "4xx/s": "core.rcv_replies_4xx",
    "5xx/s": "core.rcv_replies_5xx",
    "6xx/s": "core.rcv_replies_6xx",
    "sipgw replies/s": "sl.sent_replies",
}


def collect(client: Client) -> dict[str, Any]:
    """One round: what the dashboard shows, as plain data (also what --json prints)."""
    methods = set(client.call("system.listMethods"))
    snap: dict[str, Any] = {"time": time.time(), "stats": client.call("stats.fetch", ["all"])}
    if "dlg.stats_active" in methods:
        snap["dialogs"] = client.call("dlg.stats_active")
    if "dispatcher.list" in methods:
        snap["dispatcher"] = _destinations(client.call("dispatcher.list"))
    if "auth.bans" in methods:
        snap["bans"] = client.call("auth.bans")
    if "core.connections" in methods:
        snap["connections"] = client.call("core.connections")
    if "core.workers" in methods:
        snap["workers"] = client.call("core.workers")
    return snap


def _destinations(listing: Any) -> list[dict[str, Any]]:
    """Kamailio's nested dispatcher.list → rows of set, URI, flags, latency."""
    rows = []
    for record in (listing or {}).get("RECORDS", []) or []:
        s = record.get("SET", {})
        for target in s.get("TARGETS", []) or []:
            dest = target.get("DEST", {})
            latency = dest.get("LATENCY", {}) or {}
            rows.append({"set": s.get("ID"), "uri": dest.get("URI"), "flags": dest.get("FLAGS"),
                         "avg_ms": latency.get("AVG"), "timeouts": latency.get("TIMEOUT")})
    return rows


def rates(prev: dict[str, Any] | None, cur: dict[str, Any]) -> dict[str, float]:
    if prev is None:
        return {label: 0.0 for label in RATES}
    dt = max(cur["time"] - prev["time"], 1e-6)
    out = {}
    for label, name in RATES.items():
        before, now = prev["stats"].get(name), cur["stats"].get(name)
        if before is None or now is None:
            continue
        out[label] = max(now - before, 0) / dt  # a reset is not a negative rate
    return out


def _pairs(title: str, pairs: list[tuple[str, Any]]) -> Panel:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)  # a wrapped label would push panels off 24 lines
    table.add_column(justify="right")
    for key, value in pairs:
        table.add_row(Text(key), Text(f"{value:.1f}" if isinstance(value, float) else str(value)))
    return Panel(table, title=title, title_align="left")


def dashboard(snap: dict[str, Any], per_second: dict[str, float], where: str) -> Group:
    s = snap["stats"]
    g = s.get
    traffic = _pairs("traffic", list(per_second.items()))
    core = _pairs("transactions", [
        ("in use", g("tm.inuse_transactions", 0)), ("server total", g("tm.UAS_transactions", 0)),
        ("retransmissions", g("tm.retransmissions", 0)), ("timeouts", g("tm.timeouts", 0)),
        ("requests", g("core.rcv_requests", 0)), ("replies", g("core.rcv_replies", 0)),
    ])
    conns = _pairs("connections", [
        *_by_transport(snap.get("connections")),
        ("websocket now", g("websocket.ws_current_connections", "-")),
        ("websocket max", g("websocket.ws_max_concurrent_connections", "-")),
        ("handshakes ok", g("websocket.ws_successful_handshakes", "-")),
        ("handshakes failed", g("websocket.ws_failed_handshakes", "-")),
    ])
    auth = _pairs("auth", [
        ("authorized", g("auth.authorized", "-")), ("failed", g("auth.failed", "-")),
        ("challenged", g("auth.challenged", "-")),
        ("bans", _count(snap.get("bans")) if "bans" in snap else "-"),
    ])
    pike = _pairs("pike", [("blocked now", g("pike.blocked_ips", "-")),
                           ("dropped", g("pike.dropped_msgs", "-"))])
    load = _pairs("load", [
        # Now and the worst of the window on one row each, so the dashboard keeps to 24 lines.
        ("udp queue ms", _now_max(g, "load.udp_queue_delay")),
        ("loop lag ms", _now_max(g, "load.reactor_lag")),
        ("stream queue ms", _now_max(g, "load.stream_queue_delay")),
        ("stream unread", g("load.stream_backlog_bytes", "-")),
        ("shedding %", g("core.shed_percent", "-")),  # of new requests, refused now
    ])
    dialogs = snap.get("dialogs") or {}
    dlg = _pairs("dialogs", [("active", dialogs.get("all", g("dialog.active_dialogs", 0))),
                             ("processed", g("dialog.processed_dialogs", 0))])
    dest = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("set", "uri", "flags", "avg ms", "timeouts"):
        dest.add_column(column)
    for row in snap.get("dispatcher", []):
        flags = str(row["flags"] or "")
        style = "green" if flags.startswith("A") else "red" if flags[:1] in "ID" else "yellow"
        dest.add_row(Text(str(row["set"])), Text(str(row["uri"])), Text(flags, style=style),
                     Text(str(row["avg_ms"])), Text(str(row["timeouts"])))
    grid = Table.grid(expand=True)
    for _ in range(3):
        grid.add_column(ratio=1)
    # Load under transactions: together no taller than traffic, so 24 lines still show it all.
    grid.add_row(traffic, Group(core, load), conns)
    grid.add_row(auth, dlg, pike)
    stamp = time.strftime("%H:%M:%S", time.localtime(snap["time"]))
    panels: list[Text | Table | Panel] = [
        Text(f"sipgw top  {where}  {stamp}", style="bold"), grid,
        Panel(dest, title="dispatcher", title_align="left")]
    if snap.get("workers"):
        panels.append(Panel(_workers(snap["workers"]), title="workers", title_align="left"))
    return Group(*panels)


def _workers(workers: list[dict[str, Any]]) -> Table:
    """core.workers: one row per worker; one that is not running says how it last ended."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("worker", "pid", "uptime s", "restarts", "connections", "transactions",
                   "loop lag ms", "udp queue ms", "last exit"):
        table.add_column(column, justify="left" if column == "last exit" else "right")
    for w in workers:
        up = w.get("ready")
        table.add_row(Text(str(w.get("index")), style="green" if up else "red"),
                      Text(str(w.get("pid") or "-")), Text(f"{w.get('uptime', 0):.0f}"),
                      Text(str(w.get("restarts", 0)),
                           style="yellow" if w.get("restarts") else ""),
                      Text(str(w.get("connections", "-"))), Text(str(w.get("transactions", "-"))),
                      Text(_ms(w.get("reactor_lag_us"))), Text(_ms(w.get("udp_queue_delay_us"))),
                      Text(w.get("last_exit") or "", style="dim"))
    return table


def _ms(microseconds: Any) -> str:
    """A load: delay, kept in microseconds, as milliseconds; "-" from a sipgw without it."""
    return "-" if microseconds is None else f"{microseconds / 1000:.2f}"


def _now_max(get: Callable[..., Any], name: str) -> str:
    """A delay now and the worst of its window: "1.25 / 48.00" (``NAME_us``, ``NAME_max_us``)."""
    return f"{_ms(get(name + '_us'))} / {_ms(get(name + '_max_us'))}"


def _by_transport(info: Any) -> list[tuple[str, Any]]:
    """core.connections as rows: open connections per transport; UDP, connectionless,
    says whether it listens."""
    if not isinstance(info, dict):
        return []
    listeners = info.get("listeners") or {}
    udp = listeners.get("udp", 0)
    rows: list[tuple[str, Any]] = [("udp", "listening" if udp else "off")]
    for name, count in (info.get("connections") or {}).items():
        rows.append((name, count if count or listeners.get(name) else "off"))
    return rows


def _count(bans: Any) -> int:
    if isinstance(bans, dict):
        return sum(len(v) if isinstance(v, (list, dict)) else 1 for v in bans.values())
    return len(bans) if isinstance(bans, list) else 0


def _down(where: str, why: str) -> Group:
    return Group(Text(f"sipgw top  {where}", style="bold"),
                 Panel(Text(f"proxy unreachable ({why}); retrying", style="red")))


@click.command()
@config_option
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="SECONDS", help="Time between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per refresh (NDJSON).")
@click.option("-n", "--iterations", type=click.IntRange(min=1), metavar="N",
              help="Stop after N refreshes.")
@pass_app
def top(app: App, config_path: str | None, interval: float, as_json: bool,
        iterations: int | None) -> None:
    """A live dashboard: traffic rates, transactions, connections, auth, dialogs, load
    (queueing delay, loop lag), dispatcher destinations and workers. Reconnects when the
    proxy restarts; Ctrl-C stops."""
    path = socket_path(app, config_path)
    client: Client | None = None
    prev = None
    done = 0

    def one_round():
        nonlocal client, prev
        try:
            if client is None:
                client = Client(path, timeout=max(interval * 5, 5.0))
            snap = collect(client)
        except (Unreachable, TimeoutError, ProtocolError, RemoteError, OSError) as e:
            if client is not None:
                client.close()
            client, prev = None, None
            return None, getattr(e, "why", str(e))
        per_second = rates(prev, snap)
        prev = snap
        snap["rates"] = per_second
        return snap, None

    try:
        if as_json:
            while iterations is None or done < iterations:
                snap, why = one_round()
                app.out.out(json.dumps(snap if snap else {"time": time.time(),
                                                          "unreachable": why}),
                            highlight=False)
                done += 1
                if iterations is None or done < iterations:
                    time.sleep(interval)
            return
        from rich.live import Live

        with Live(console=app.out, auto_refresh=False, screen=app.out.is_terminal) as live:
            while iterations is None or done < iterations:
                snap, why = one_round()
                view = dashboard(snap, snap["rates"], path) if snap else _down(path, why)
                live.update(view, refresh=True)
                done += 1
                if iterations is None or done < iterations:
                    time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if client is not None:
            client.close()
