"""The dashboard's JSON API under /api/: what the page reads and the actions it takes
(protocol.md, "The dashboard"). Reads are the replies of `stats`, `stats-tube`,
`list-jobs`, `job-info`, ... run through the console, so both stores answer alike and
a page of jobs is as bounded as `list-jobs` is. Each action is one protocol command.
Imports: `http`, `wire`, stdlib.
"""

import json
import time
from urllib.parse import parse_qs, unquote

from qserver.http.console import Console
from qserver.http.metrics import held_by_tube
from qserver.http.rates import Rates
from qserver.wire import parse_tube
from qserver.errors import BadFormat

PAGE_LIMIT = 100                # jobs per page at most (list-jobs allows 1000)
PREVIEW = 200                   # body bytes shown in a job list
BODY = 4096                     # body and result bytes shown on a job's page
MAX_BOUND = 1_000_000           # kick N from the page
MAX_SECONDS = 4294967295
MAX_TUBES = 1000                # tubes on the overview (by name); `tubes-total` says all
STATES = ("ready", "delayed", "reserved", "buried", "held", "completed", "dead", "all")
# A queue refusal's word -> the HTTP status it gets.
REFUSALS = {"NOT_FOUND": 404, "BAD_FORMAT": 400, "INTERNAL_ERROR": 503,
            "DRAINING": 503, "OUT_OF_MEMORY": 503}


class Answer(Exception):
    """A request ends early with this status and JSON error."""

    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status = status
        self.error = error


class Api:
    def __init__(self, server, read_only: bool):
        self.server = server
        self.read_only = read_only
        self.console = Console(server)
        self.rates = Rates(server.loop, server.info.cmd_counts)
        self.reads = {"overview": self.overview, "server": self.server_page}
        self.actions = {("jobs", "kick"): self.kick_job, ("jobs", "retry"): self.kick_job,
                        ("jobs", "delete"): self.delete_job,
                        ("tubes", "kick"): self.kick_tube, ("tubes", "pause"): self.pause,
                        ("tubes", "flush"): self.flush, ("tubes", "policy"): self.policy}

    def close(self) -> None:
        self.rates.stop()

    def is_action(self, path: str) -> bool:
        parts = path.split("/")
        return len(parts) == 5 and (parts[2], parts[4]) in self.actions

    # -- dispatch ---------------------------------------------------------------

    async def get(self, path: str, query: str) -> dict:
        parts = path.split("/")[2:]             # /api/<...>
        if len(parts) == 1 and parts[0] in self.reads:
            return await self.reads[parts[0]]()
        if len(parts) == 2 and parts[0] == "tubes":
            return await self.tube(tube_name(parts[1]))
        if len(parts) == 3 and parts[0] == "tubes" and parts[2] == "jobs":
            return await self.jobs(tube_name(parts[1]), parse_qs(query))
        if len(parts) == 2 and parts[0] == "jobs":
            return await self.job(job_id(parts[1]))
        raise Answer(404, "no such API path")

    async def post(self, path: str, body: bytes) -> dict:
        _, _, kind, name, action = path.split("/")
        arguments = json_object(body)
        target = job_id(name) if kind == "jobs" else tube_name(name)
        return await self.actions[kind, action](target, arguments)

    async def _run(self, line: str, counted: bool = False):
        return accepted(await self.console.run(line, counted))

    # -- reads ------------------------------------------------------------------

    def node(self) -> dict:
        info = self.server.info
        return {"hostname": info.hostname, "pid": info.pid, "version": info.version,
                "id": info.instance_id,
                "store": "memory" if self.server.store is None else "redis",
                "read_only": self.read_only, "time": time.time()}

    async def overview(self) -> dict:
        page = await self.server_figures()
        names = sorted((await self._run("list-tubes")).yaml())
        page["tubes-total"] = len(names)
        held = None if self.server.store is not None else held_by_tube(self.server.engine)
        page["tubes"] = [tube for tube in [await self.tube_stats(name, held) for name in
                                           names[:MAX_TUBES]] if tube is not None]
        page["rates"] = self.rates.series()
        return page

    async def server_figures(self) -> dict:
        return {"node": self.node(), "stats": (await self._run("stats")).yaml(),
                "ext": (await self._run("stats-ext")).yaml()}

    async def server_page(self) -> dict:
        page = await self.server_figures()
        page["connections"] = [connection_row(conn) for conn in
                               sorted(self.server.connections, key=opened_at)]
        return page

    async def tube_stats(self, name: str, held: dict = None):
        """stats-tube's fields with `held` and `head-age`; None if the tube is gone.
        `held`: held jobs by tube name, when already counted (in memory)."""
        reply = await self.console.run(f"stats-tube {name}")
        if reply.word != "OK":
            return None
        stats = reply.yaml()
        stats["held"], stats["head-age"] = await self.tube_extras(name, held)
        return stats

    async def tube_extras(self, name: str, held: dict = None) -> tuple:
        """(held jobs, age of the next ready job or None): figures no command gives
        alone, read where they are cheap (list-jobs would build an index in memory)."""
        store = self.server.store
        if store is None:
            engine = self.server.engine
            held = held_by_tube(engine) if held is None else held
            return held.get(name, 0), head_age(engine, name)
        held = await store.held_count(name)
        page = (await self._run(f"list-jobs {name} ready 0 1")).yaml()
        return held, page["jobs"][0]["age"] if page["jobs"] else None

    async def tube(self, name: str) -> dict:
        policy = (await self._run(f"config-tube {name}")).yaml()
        return {"name": name, "stats": await self.tube_stats(name), "policy": policy}

    async def jobs(self, name: str, query: dict) -> dict:
        state = one(query, "state", "ready")
        cursor = one(query, "cursor", "0")
        limit = number(one(query, "limit", "20"), 1, PAGE_LIMIT, "limit")
        if state not in STATES or not cursor.isprintable() or " " in cursor:
            raise Answer(400, "bad state or cursor")
        page = (await self._run(f"list-jobs {name} {state} {cursor} {limit}")).yaml()
        for row in page["jobs"]:
            body = await self.body(f"peek {row['id']}", PREVIEW) if row["size"] else None
            row["preview"] = None if body is None else {
                key: value for key, value in body.items() if key in ("text", "hex")}
            row["truncated"] = body is not None and body["truncated"]
        return {"tube": name, "state": state, "next": page["next"], "jobs": page["jobs"]}

    async def job(self, number_: int) -> dict:
        info = (await self._run(f"job-info {number_}")).yaml()
        return {"id": number_, "info": info,
                "body": await self.body(f"peek {number_}", BODY),
                "result": await self.body(f"peek-result {number_}", BODY)}

    async def body(self, line: str, limit: int):
        """The data of a FOUND reply shown as text or hex, or None."""
        reply = await self.console.run(line)
        if reply.word != "FOUND":
            return None
        data = reply.data
        return {**shown(data[:limit]), "size": len(data), "truncated": len(data) > limit}

    # -- actions ----------------------------------------------------------------

    async def kick_job(self, job: int, _) -> dict:
        return ok(await self._run(f"kick-job {job}", counted=True))

    async def delete_job(self, job: int, _) -> dict:
        return ok(await self._run(f"delete {job}", counted=True))

    async def kick_tube(self, name: str, arguments: dict) -> dict:
        bound = number(arguments.get("bound", 1), 1, MAX_BOUND, "bound")
        reply = accepted(await self.console.run_in_tube(name, f"kick {bound}"))
        return ok(reply, kicked=int(reply.words[1]))

    async def pause(self, name: str, arguments: dict) -> dict:
        delay = number(arguments.get("delay", 0), 0, MAX_SECONDS, "delay")
        return ok(await self._run(f"pause-tube {name} {delay}", counted=True))

    async def flush(self, name: str, _) -> dict:
        reply = await self._run(f"flush-tube {name}", counted=True)
        return ok(reply, flushed=int(reply.words[1]))

    async def policy(self, name: str, arguments: dict) -> dict:
        setting, value = arguments.get("name"), arguments.get("value")
        if not (word(setting) and word(str(value))):
            raise Answer(400, "want {\"name\": ..., \"value\": ...}")
        return ok(await self._run(f"config-tube {name} {setting} {value}", counted=True))


# -- helpers ----------------------------------------------------------------------

def accepted(reply):
    """The reply, unless the queue refused the command (Answer with its status)."""
    if reply.word in REFUSALS:
        raise Answer(REFUSALS[reply.word], reply.word)
    return reply


def ok(reply, **more) -> dict:
    return {"ok": True, "reply": reply.line, **more}


def head_age(engine, name: str):
    tube = engine.tubes.get(name)
    job = None if tube is None else tube.peek_ready()
    return None if job is None else int(time.time() - job.created)


def connection_row(conn) -> dict:
    """What the server page shows of one client connection."""
    peer = conn.transport.get_extra_info("peername") if conn.transport else None
    row = {"peer": peer_text(peer), "age": int(time.monotonic() - opened_at(conn))}
    store_session = conn.store_session
    if store_session is not None:
        row.update(use=store_session.use, watch=list(store_session.watch), reserved=None,
                   waiting=store_session.waiting is not None,
                   producer=store_session.producer, worker=store_session.worker)
    else:
        session = conn.session
        row.update(use=session.use.name, watch=[tube.name for tube in session.watch],
                   reserved=len(session.reserved), waiting=session.waiting,
                   producer=session.producer, worker=session.worker)
    return row


def opened_at(conn) -> float:
    return conn.opened


def peer_text(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        return f"{host}:{peer[1]}"
    return peer or "unix socket"


def shown(data: bytes) -> dict:
    """Bytes as {"text": ...} when they read as UTF-8 text, else {"hex": ...}."""
    for cut in range(4):        # a truncated preview may end inside a character
        try:
            text = data[:len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if all(char.isprintable() or char in "\t\r\n" for char in text):
            return {"text": text}
        break
    return {"hex": data.hex()}


def tube_name(text: str) -> str:
    name = unquote(text)
    try:
        parse_tube(name.encode("latin-1"))
    except (BadFormat, UnicodeEncodeError):
        raise Answer(400, "bad tube name") from None
    return name


def job_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 1 << 63:
        raise Answer(400, "bad job id")
    return int(text)


def number(value, low: int, high: int, what: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Answer(400, f"{what} must be a whole number from {low} to {high}")
    return value


def word(text) -> bool:
    return isinstance(text, str) and 0 < len(text) <= 200 and text.isprintable() \
        and " " not in text


def one(query: dict, key: str, default: str) -> str:
    values = query.get(key)
    return values[-1] if values else default


def json_object(body: bytes) -> dict:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        raise Answer(400, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise Answer(400, "the body must be a JSON object")
    return value
