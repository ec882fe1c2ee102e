"""``sipgw trace``: live SIP messages from the running proxy (kamcmd's siptrace, sngrep-ish)."""

from __future__ import annotations

import json
import time
from typing import Any, BinaryIO

import click
from rich.text import Text

from sipgw.cli.app import EXIT_UNREACHABLE, App, pass_app
from sipgw.cli.connect import connect, unreachable
from sipgw.cli.options import config_option
from sipgw.rpc.client import ProtocolError, RemoteError, Unreachable


def _who(uri: str | None) -> str:
    if not uri:
        return "?"
    rest = uri.split(":", 1)[-1]
    return rest.split(";", 1)[0]


def summary_line(rec: dict[str, Any]) -> Text:
    """One coloured line: time, direction, flow, method or status, Call-ID, From → To."""
    stamp = time.strftime("%H:%M:%S", time.localtime(rec["time"]))
    stamp += f".{int(rec['time'] * 1000) % 1000:03d}"
    line = Text(stamp + " ", style="dim")
    if rec.get("worker") is not None:  # a service with workers: the one that handled it
        line.append(f"w{rec['worker']} ", style="dim")
    inbound = rec["dir"] == "in"
    line.append("in  " if inbound else "out ", style="cyan" if inbound else "magenta")
    line.append(f"{rec['transport']} {rec['src']} -> {rec['dst']} ")
    if rec.get("status") is not None:
        status = rec["status"]
        style = {1: "dim", 2: "green", 3: "blue", 4: "yellow"}.get(status // 100, "red")
        cseq_method = (rec.get("cseq") or " ").split(" ")[-1]
        line.append(f"{status} {rec.get('reason') or ''}".rstrip(), style=f"bold {style}")
        if cseq_method:
            line.append(f" ({cseq_method})")
    elif rec.get("method"):
        line.append(rec["method"], style="bold")
        line.append(f" {rec.get('ruri') or ''}")
    else:
        line.append("(not SIP)", style="red")
    line.append(f"  {rec.get('call_id') or '-'}  ", style="dim")
    line.append(f"{_who(rec.get('from'))} -> {_who(rec.get('to'))}")
    return line


@click.command()
@config_option
@click.option("-m", "--method", "methods", multiple=True, metavar="METHOD",
              help="Only this method (and its replies); repeat or comma-separate for more.")
@click.option("-u", "--user", help="Only messages whose From, To or Request-URI user is USER.")
@click.option("--call-id", help="Only messages of this Call-ID.")
@click.option("-a", "--address", metavar="HOST[:PORT]",
              help="Only messages from or to this address.")
@click.option("-s", "--status", metavar="CLASS",
              help="Only replies of this class (4xx) or code (404).")
@click.option("-v", "--verbose", is_flag=True, help="Print whole messages under each line.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message (NDJSON).")
@click.option("--pcap", "pcap_path", type=click.Path(dir_okay=False, writable=True),
              metavar="FILE", help="Also write the messages to FILE (pcap, for Wireshark).")
@click.option("-n", "--count", type=click.IntRange(min=1), metavar="N",
              help="Stop after N messages.")
@pass_app
def trace(app: App, config_path: str | None, methods: tuple[str, ...], user: str | None,
          call_id: str | None, address: str | None, status: str | None, verbose: bool,
          as_json: bool, pcap_path: str | None, count: int | None) -> None:
    """Show SIP messages passing through the running proxy, live, until Ctrl-C."""
    params: dict[str, Any] = {
        "raw": bool(verbose or as_json or pcap_path),
    }
    if methods:
        params["method"] = list(methods)
    for key, value in (("user", user), ("call_id", call_id), ("address", address),
                       ("status", status)):
        if value:
            params[key] = value
    client = connect(app, config_path)
    pcap_file: BinaryIO | None = None
    writer = None
    seen = 0
    try:
        stream = client.stream("trace.subscribe", params)
        if pcap_path:
            from sipgw.wire.pcap import PcapWriter

            pcap_file = open(pcap_path, "wb")
            writer = PcapWriter(pcap_file)
        if not as_json:
            app.err.print("tracing; Ctrl-C stops")
        for rec in stream:
            seen += 1
            if writer is not None:
                writer.write(time=rec["time"], transport=rec["transport"], src=rec["src"],
                             dst=rec["dst"], payload=rec.get("raw", "").encode("utf-8"),
                             inbound=rec["dir"] == "in")
                pcap_file.flush()  # type: ignore[union-attr]
            if as_json:
                app.out.out(json.dumps(rec, ensure_ascii=False), highlight=False)
            else:
                app.out.print(summary_line(rec))
                if verbose:
                    app.out.print(Text(rec.get("raw", "").replace("\r\n", "\n").rstrip("\n")
                                       + "\n", style="dim"))
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    except Unreachable as e:
        if seen:
            app.fail(f"the proxy went away after {seen} messages ({e.why})", EXIT_UNREACHABLE)
        unreachable(app, e)
    except RemoteError as e:
        app.fail(f"trace.subscribe: {e.message}")
    except ProtocolError as e:
        app.fail(f"trace: bad answer from sipgw: {e}")
    finally:
        client.close()
        if pcap_file is not None:
            pcap_file.close()
