"""Differential tests: beanstalkd 1.12 and qserver must give the same bytes for the same
input (after `differential.normalise`). Each test starts its own pair of servers.

Scripted scenarios pin the protocol corners named in the reference study; seeded random
walks (`differential.RandomSession`) mix valid and invalid commands over three
connections, pipelined and split into random TCP segments.
"""

import pytest

from differential import Cmd, Pair, Runner, Step, run_random, run_script, warm_up

# The beanstalkd conformance suite: every test runs on both stores.
pytestmark = pytest.mark.usefixtures("each_store")

SEEDS = range(20)
STEPS_PER_SEED = 2000


def S(conn: int, data: bytes, replies: int = 1, kind: str = "", cuts=None) -> Step:
    """A scripted step; a bare line gets its CRLF."""
    if b"\r\n" not in data and replies:
        data += b"\r\n"
    return Step(conn, [Cmd(data, replies, kind)], cuts=cuts or [])


def Q(conn: int, data: bytes, replies: int = 0) -> Step:
    """A step after which the server must close the connection."""
    return Step(conn, [Cmd(data, replies, "quit")], closes=True)


def put(pri=0, delay=0, ttr=100, body=b"job") -> bytes:
    return b"put %d %d %d %d\r\n%s\r\n" % (pri, delay, ttr, len(body), body)


LIFECYCLE = [
    S(0, put(body=b"a")), S(0, put(5, body=b"bb")), S(0, b"peek 1"), S(0, b"peek-ready"),
    S(0, b"stats-job 1"), S(1, b"reserve"), S(1, b"stats-job 1"), S(1, b"touch 1"),
    S(0, b"touch 1"), S(0, b"delete 1"), S(0, b"release 1 0 0"), S(1, b"release 1 7 0"),
    S(1, b"reserve-job 1"), S(1, b"bury 1 9"), S(1, b"peek-buried"), S(1, b"bury 1 9"),
    S(2, b"kick-job 2"), S(2, b"kick-job 1"), S(2, b"kick-job 1"), S(2, b"reserve"),
    S(2, b"reserve-with-timeout 0"), S(2, b"reserve-with-timeout 0"),
    S(0, b"reserve-with-timeout 0"),
    S(2, b"bury 1 0"), S(2, b"bury 2 0"), S(0, b"kick 1"), S(0, b"stats-tube default"),
    S(0, b"kick 5"), S(0, b"kick 5"), S(1, b"reserve-job 2"), S(1, b"delete 2"),
    S(0, b"delete 1"), S(0, b"peek 1"), S(0, b"stats"), S(0, b"list-tubes", kind="list-tubes"),
    S(0, b"list-tube-used"), S(0, b"list-tubes-watched"),
]

FAILED_PUTS_USE_IDS = [
    S(0, put()), S(0, b"put 0 0 100 3\r\nabcXY", 1), S(0, put()),
    S(0, b"put 0 0 100 65536\r\n" + b"d" * 65536 + b"\r\n"), S(0, put()),
    S(0, b"put 0 0 100 1 x"), S(0, put()), S(0, b"put 0 0 100 5\r\nabc\r\nXY", 1),
    S(0, put(body=b"x" * 65535)), S(0, put()), S(0, b"put 0 0 0 1\r\nz\r\n"),
    S(0, b"stats-job 9"), S(0, b"delete 9"), S(0, b"stats"),
]

TUBE_NAMES = [
    S(0, b"use " + b"n" * 200), S(0, b"use " + b"n" * 201), S(0, b"use -x"),
    S(0, b"use x-"), S(0, b"use A-Za-z0-9+/;.$_()"), S(0, b"use  t"), S(0, b"use t "),
    S(0, b"use t u"), S(0, b"use "), S(0, b"use"), S(0, b"use a*b"),
    S(0, b"watch " + b"n" * 200), S(0, b"watch " + b"n" * 201), S(0, b"watch -x"),
    S(0, b"watch t"), S(0, b"watch t"), S(0, b"ignore zz"), S(0, b"ignore default"),
    S(0, b"ignore t"), S(0, b"ignore " + b"n" * 200), S(0, b"ignore t"),
    S(0, b"list-tubes-watched"), S(0, b"stats-tube nope"), S(0, b"stats-tube -x"),
    S(0, b"stats-tube " + b"n" * 201), S(1, b"use gc9"), S(1, b"use default"),
    S(1, b"pause-tube gc9 10"), S(1, b"list-tubes", kind="list-tubes"),
    S(1, b"stats-tube " + b"n" * 200), S(0, b"stats"),
]

# pause-tube validates the name it cut out like the other tube commands do.
PAUSE_TUBE_NAMES = [
    S(0, b"use " + b"n" * 200), S(0, b"pause-tube " + b"n" * 200 + b" 0"),
    S(0, b"pause-tube -x 0"), S(0, b"pause-tube-x 0"), S(0, b"pause-tube " + b"n" * 201 + b" 0"),
    S(0, b"pause-tube a*b 0"), S(0, b"pause-tube  default  0"), S(0, b"stats"),
]

NUMBERS = [
    S(0, put()), S(0, b"peek 01"), S(0, b"peek  1"), S(0, b"peek 1 "), S(0, b"peek -1"),
    S(0, b"peek +1"), S(0, b"peek 18446744073709551615"),
    S(0, b"peek 18446744073709551616"), S(0, b"peek 1x"), S(0, b"peek\t1"),
    S(0, b"put 4294967295 4294967295 4294967295 0\r\n\r\n"),
    S(0, b"put 4294967296 0 100 0"), S(0, b"put 0 0 100 4294967296"),
    S(0, b"stats-job 2"), S(0, b"reserve-job 1"), S(0, b"release 1 4294967296 0"),
    S(0, b"release 1 1 4294967296"), S(0, b"release 1  1  0 "), S(0, b"release 1  1  0"),
    S(0, b"reserve"), S(0, b"bury 1 4294967295"), S(0, b"stats-job 1"),
    S(0, b"pause-tube default 4294967296"), S(0, b"pause-tube default -1"),
    S(0, b"pause-tube default 0 x"), S(0, b"pause-tube default 00"),
    S(0, b"reserve-with-timeout 0 x"), S(0, b"reserve-with-timeout 0x"),
    S(0, b"reserve-with-timeout  0"),
]

KICK_STRTOUL = [S(0, put(delay=1000, body=b"%d" % i)) for i in range(12)] + [
    S(0, b"kick 1abc"), S(0, b"kick +1"), S(0, b"kick  1"), S(0, b"kick \t1"),
    S(0, b"kick 0x5"), S(0, b"kick 4294967297"), S(0, b"kick 4294967296"),
    S(0, b"kick 99999999999999999999"), S(0, b"kick "), S(0, b"kick"), S(0, b"kick x"),
    S(0, b"kick 1 2"), S(0, b"peek-delayed"), S(0, b"kick -1"), S(0, b"stats"),
]

PREFIX_QUIRKS = [
    S(0, b"pause-tubedefault 0"), S(0, b"pause-tube  default  0"), S(0, b"pause-tube"),
    S(0, b"reserve-with-timeout"), S(0, b"reserve "), S(0, b"reservex"), S(0, b"stats "),
    S(0, b"statsx"), S(0, b"peek-ready "), S(0, b"list-tubesx"), S(0, b"list-tubes "),
    S(0, b"STATS"), S(0, b"Put 0 0 1 1"), S(0, b" stats"), S(0, b""), S(0, b"foo bar"),
    S(0, b"delete"), S(0, b"peek"), S(0, b"stats-job"), S(0, b"touch"),
    Q(1, b"quitx\r\n"), Q(1, b"quit please\r\n"), S(1, b"stats"), Q(2, b"quit\r\n"),
    S(2, b"list-tube-used"),
    S(0, b"stats"),
]

PUT_FRAMING = [
    S(0, b"put 0 0 10 5 \r\nhello\r\n", 2), S(0, b"put 0 0 10 x\r\npeek-ready\r\n", 2),
    S(0, b"put 0 0 1 70000 junk\r\n" + b"\0" * 70000 + b"\r\n"),
    S(0, b"put 0 0 10 65536\r\n" + (b"delete 9999\r\n" * 5042)[:65538]),
    S(0, b"put 0 0 10 12\r\ndelete 9999\r\n\r\n"), S(0, b"peek 1"),
    S(0, b"put 0 0 10 2\r\nab\n\r\r\n", 2), S(0, b"put 0 0 10 2\r\nab\r\r"),
    S(0, b"put 0 0 10 4\r\n\r\n\r\n\r\n"), S(0, b"peek 3"),
    S(0, b"put 0 0 10 3\r\n\0\0\0\r\nstats-job 4\r\n", 2),
    S(0, b"put 0 0 10 30\r\n" + bytes(range(30)) + b"\r\n", cuts=list(range(1, 40))),
    S(0, b"peek 5"), S(0, b"put 0 0 10 0\r\n\r\n"), S(0, b"peek 6"),
]

LONG_LINES = [
    S(0, b"use " + b"p" * 200), S(0, b"pause-tube " + b"p" * 200 + b" 4294967295"),
    S(0, b"x" * 222), S(0, b"x" * 223 + b"\r\nlist-tube-used\r\n"),
    S(0, b"x" * 224 + b"\r\n"), S(0, b"x" * 300 + b"\r\n"), S(0, b"x" * 446 + b"\r\n"),
    S(0, b"x" * 447 + b"\r\nstats\r\n"), S(0, b"stats\rX" + b"q" * 300 + b"\r\n"),
    S(0, b"a\rb\r\nstats\r\n" + b"q" * 250 + b"\r\n"), S(0, b"stats\x00"),
    S(0, b"\x00"), S(0, b"use a\x00b"), S(0, b"put 0 0 10 1\x00\r\nx\r\n", 2),
    S(0, b"x" * 5000 + b"\r\n", cuts=[100, 224, 225, 1000, 4000]), S(0, b"list-tube-used"),
]

CONNECTIONS = [
    S(0, put(body=b"one")), S(0, put(body=b"two")), S(1, b"reserve"), S(0, b"delete 1"),
    S(0, b"release 1 0 0"), S(0, b"bury 1 0"), S(0, b"touch 1"), S(0, b"peek 1"),
    S(0, b"stats-job 1"), S(0, b"reserve-job 1"), S(0, b"kick-job 1"),
    S(2, b"watch other"), S(2, b"ignore default"), S(2, b"reserve-with-timeout 0"),
    S(0, b"use other"), S(0, put(body=b"three")), S(0, b"pause-tube other 1000"),
    S(2, b"reserve-with-timeout 0"), S(0, b"peek-ready"), S(1, b"reserve-job 3"),
    S(1, b"release 3 0 0"), S(0, b"pause-tube other 0"), S(2, b"reserve"),
    S(0, b"stats-tube other"), Q(1, b"quit\r\n"), S(1, b"list-tube-used"),
    S(0, b"stats-job 1"), S(0, b"stats"), S(2, b"use default"), S(2, b"peek-ready"),
    S(0, b"stats-tube other"),
]

DELAYED = [
    S(0, put(delay=500, body=b"d1")), S(0, put(delay=100, body=b"d2")),
    S(0, put(body=b"r")), S(0, b"peek-delayed"), S(0, b"stats-job 1"),
    S(0, b"reserve"), S(0, b"release 3 1 200"), S(0, b"stats-job 3"),
    S(0, b"reserve-job 1"), S(0, b"bury 1 1"), S(0, b"kick 1"), S(0, b"kick 1"),
    S(0, b"peek-delayed"), S(0, b"kick 10"), S(0, b"stats-tube default"),
    S(0, b"pause-tube default 100"), S(0, b"stats-tube default"),
    S(0, b"reserve-with-timeout 0"), S(0, b"reserve-job 2"), S(0, b"stats"),
]

PIPELINED = [
    S(0, put(body=b"p1") + b"reserve\r\nlist-tube-used\r\nstats-job 1\r\n"
      + b"delete 1\r\nbogus\r\nuse t\r\n" + put(body=b"p2") + b"peek-ready\r\n", 9),
    Step(1, [Cmd(b"use t\r\npeek-ready\r\nwatch t\r\nreserve\r\nbury 2 0\r\nkick 1\r\n"
                 b"list-tubes-watched\r\nquit\r\nstats\r\n", 7)],
         cuts=[3, 17, 18, 40, 41, 60], closes=True),
    S(1, b"list-tube-used"), S(0, b"stats"),
]

SCRIPTS = {
    "lifecycle": LIFECYCLE, "failed_puts_use_ids": FAILED_PUTS_USE_IDS,
    "tube_names": TUBE_NAMES, "pause_tube_names": PAUSE_TUBE_NAMES, "numbers": NUMBERS, "kick_strtoul": KICK_STRTOUL,
    "prefix_quirks": PREFIX_QUIRKS, "put_framing": PUT_FRAMING, "long_lines": LONG_LINES,
    "connections": CONNECTIONS, "delayed": DELAYED, "pipelined": PIPELINED,
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_scripted(name):
    run_script(SCRIPTS[name], f"script {name}")


def test_disconnect_mid_body_uses_an_id():
    """A put whose client goes away mid-body still uses up an id."""
    pair = Pair(2)
    try:
        runner = Runner(pair, "disconnect mid-body")
        warm_up(runner, 2)
        runner.run(S(0, put()))
        runner.run(Step(1, [Cmd(b"put 0 0 100 10\r\nabc", 0)]))
        pair.hang_up(1)  # returns once both servers have noticed, before counting
        runner.run(S(1, b"list-tube-used"))
        for data in (put(), b"stats-job 3", b"stats"):
            runner.run(S(0, data))
    finally:
        pair.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_random(seed):
    assert run_random(seed, STEPS_PER_SEED) >= STEPS_PER_SEED
