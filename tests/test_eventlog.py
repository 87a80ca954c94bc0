"""The event log (p2pserve/eventlog.py, docs/operations.md "Logs"): both formatters keep one
event on one line whatever its fields hold; the request log turns the serving tracer's hooks
into request lines; a routed request on the memory transport logs offloaded, accepted,
payment and claim lines with the right fields; ``--log-format`` and ``--log-level`` refuse
bad values in the one error format."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from typer.testing import CliRunner

from p2pserve.cli import app
from p2pserve.clock import Clock
from p2pserve.config import parse_config
from p2pserve.eventlog import HumanFormatter, JsonFormatter, StderrHandler, configure, escape, event, event_of
from p2pserve.membership.ratelimit import LineBudget
from p2pserve.requestlog import RequestLog
from p2pserve.serving.events import Completed, Outcome
from p2pserve.sim.cluster import open_cluster
from p2pserve.testing.scripted import ScriptedBackend
from transports.memory import MemoryNetwork

T0 = Clock(lambda: 1_767_225_600.25)  # 2026-01-01T00:00:00.250Z
ODD = 'a "quoted"\nsecond line\r\tand\u2028more\x00\x7f\\ é'


def record(name: str = "p2pserve.test", level: int = logging.INFO, **fields: Any) -> logging.LogRecord:
    """The record ``event(logger, "thing", **fields)`` makes."""
    logger = logging.getLogger(name)
    out: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, r: logging.LogRecord) -> None:
            out.append(r)

    keep = Keep()
    logger.addHandler(keep)
    old, logger.propagate = logger.propagate, False
    logger.setLevel(logging.DEBUG)
    try:
        event(logger, "thing", level=level, **fields)
    finally:
        logger.removeHandler(keep)
        logger.propagate = old
        logger.setLevel(logging.NOTSET)
    (r,) = out
    return r


def test_human_line() -> None:
    r = record(peer="12D3KooWabc", latency_s=0.123456, tokens=7, ok=True, none=None, addrs=["/ip4/1/tcp/2", "/memory/3"],
               digest=b"\x01\xff", outcome=Outcome.FAILED)
    line = HumanFormatter(clock=T0).format(r)
    assert line == ("2026-01-01T00:00:00.250Z INFO thing peer=12D3KooWabc latency_s=0.1235 tokens=7 ok=true none=- "
                    "addrs=/ip4/1/tcp/2,/memory/3 digest=01ff outcome=failed")
    assert r.getMessage() == line.split(" INFO ", 1)[1]  # what caplog and foreign handlers read


def test_human_line_escapes_whatever_a_field_holds() -> None:
    r = record(level=logging.WARNING, model=ODD, empty="", eq="a=b", models=["x y", "z"])
    line = HumanFormatter(clock=T0).format(r)
    assert "\n" not in line and "\r" not in line and len(line.splitlines()) == 1
    assert line == ('2026-01-01T00:00:00.250Z WARNING thing model="a \\"quoted\\"\\nsecond line\\r\\tand\\u2028more'
                    '\\x00\\x7f\\\\ é" empty="" eq="a=b" models="x y,z"')


def test_plain_records_are_one_line_too() -> None:
    r = logging.LogRecord("p2pserve.ledger.service", logging.WARNING, __file__, 1, "refusing %s", (ODD,), None)
    line = HumanFormatter(clock=T0).format(r)
    assert line == f"2026-01-01T00:00:00.250Z WARNING ledger.service: refusing {escape(ODD)}"
    assert len(line.splitlines()) == 1
    obj = json.loads(JsonFormatter(clock=T0).format(r))
    assert obj == {"ts": "2026-01-01T00:00:00.250Z", "level": "warning", "event": "log",
                   "fields": {"logger": "p2pserve.ledger.service", "message": f"refusing {ODD}"}}


def test_json_line() -> None:
    r = record(level=logging.WARNING, peer="p", model=ODD, price=0.008, addrs=("a", "b"), n=None)
    line = JsonFormatter(clock=T0).format(r)
    assert len(line.splitlines()) == 1 and line.isascii()
    assert json.loads(line) == {"ts": "2026-01-01T00:00:00.250Z", "level": "warning", "event": "thing",
                                "fields": {"peer": "p", "model": ODD, "price": 0.008, "addrs": ["a", "b"], "n": None}}


def _with_exception() -> logging.LogRecord:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        return logging.LogRecord("p2pserve.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())


def test_exceptions_add_an_error_field_and_a_traceback_only_when_asked() -> None:
    r = _with_exception()
    assert HumanFormatter(clock=T0).format(r) == '2026-01-01T00:00:00.250Z ERROR x: failed error="ValueError: bad\\nthing"'
    verbose = HumanFormatter(clock=T0, tracebacks=True).format(r)
    assert verbose.splitlines()[1] == "Traceback (most recent call last):"
    obj = json.loads(JsonFormatter(clock=T0).format(r))
    assert obj["fields"]["error"] == "ValueError: bad\nthing" and "traceback" not in obj["fields"]
    line = JsonFormatter(clock=T0, tracebacks=True).format(r)
    assert len(line.splitlines()) == 1 and "Traceback" in json.loads(line)["fields"]["traceback"]


def test_event_is_free_when_its_level_is_off() -> None:
    logger = logging.getLogger("p2pserve.test.off")
    logger.setLevel(logging.WARNING)
    try:
        class Boom:
            def __str__(self) -> str:
                raise AssertionError("rendered")

        event(logger, "quiet", thing=Boom())  # INFO: dropped before anything is rendered
    finally:
        logger.setLevel(logging.NOTSET)
    assert event_of(logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)) is None


@pytest.fixture
def stderr_log() -> Iterator[None]:
    """Remove what :func:`configure` installed once the test is over."""
    root = logging.getLogger()
    level = root.level
    try:
        yield
    finally:
        for h in [h for h in root.handlers if isinstance(h, StderrHandler)]:
            root.removeHandler(h)
        root.setLevel(level)
        for name in ("libp2p", "p2pserve.http", "httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_configure_installs_one_handler_and_quiets_libraries(stderr_log: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure(logging.INFO, "json", clock=T0)
    configure(logging.WARNING, "human", clock=T0)
    assert sum(isinstance(h, StderrHandler) for h in logging.getLogger().handlers) == 1
    logging.getLogger("p2pserve.t").info("not shown")
    logging.getLogger("libp2p.swarm").error("dial failed")  # libp2p's spam: off below DEBUG
    logging.getLogger("p2pserve.t").warning("shown")
    assert capsys.readouterr().err == "2026-01-01T00:00:00.250Z WARNING t: shown\n"
    with pytest.raises(ValueError, match="unknown log format 'yaml'"):
        configure(logging.INFO, "yaml")


def test_line_budget_bounds_lines_per_kind_and_counts_the_rest() -> None:
    b = LineBudget(burst=3, period=2.0)
    assert [b.take("peer_seen", 0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert b.take("peer_lost", 0.0) == 0  # kinds are separate
    assert b.take("peer_seen", 1.0) is None
    assert b.take("peer_seen", 2.0) == 3  # the line written now says 3 were left out
    assert b.take("peer_seen", 2.0) is None


# --- the request log (the serving tracer) -----------------------------------------------------


def done(executor: str, local: bool) -> Completed:
    return Completed("stop", prompt_tokens=5, completion_tokens=9, executor=executor, local=local)


def test_request_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="p2pserve.requests")
    rl = RequestLog("me")
    rl.request_started("k1", "m", 10.0)
    rl.attempt_started("k1", "me", True, 10.0)
    rl.first_text("k1", "me", 10.25)
    rl.completed("k1", done("me", True))
    rl.attempt_ended("k1", "me", Outcome.COMPLETED, 11.0)
    rl.request_ended("k1", True, "me", 11.0)

    rl.request_started("k2", "m", 20.0)
    rl.attempt_started("k2", "busy", False, 20.0)
    rl.attempt_ended("k2", "busy", Outcome.REFUSED, 20.5)
    rl.attempt_started("k2", "dies", False, 20.5)
    rl.first_text("k2", "dies", 21.0)
    rl.attempt_ended("k2", "dies", Outcome.FAILED, 22.0)
    rl.attempt_started("k2", "me", True, 22.0)
    rl.completed("k2", done("me", True))
    rl.request_ended("k2", True, "me", 23.0)

    rl.request_started("k3", "m", 30.0)
    rl.attempt_started("k3", "p", False, 30.0)
    rl.attempt_ended("k3", "p", Outcome.FAILED, 31.0)
    rl.request_ended("k3", False, None, 31.0)

    rl.request_started("k4", "nope", 40.0)
    rl.request_ended("k4", False, None, 40.0)

    lines = [(r.levelname, *event_of(r)) for r in caplog.records]  # type: ignore[misc]
    assert lines == [
        ("INFO", "request_local", {"req": "k1", "model": "m", "latency_s": 1.0, "ttft_s": 0.25, "tokens_in": 5,
                                   "tokens_out": 9}),
        ("DEBUG", "request_failover", {"req": "k2", "model": "m", "from": "busy", "to": "dies", "outcome": "refused",
                                       "after_s": 0.5}),
        ("INFO", "request_failover", {"req": "k2", "model": "m", "from": "dies", "to": "local", "outcome": "failed",
                                      "after_s": 2.0}),
        ("INFO", "request_local", {"req": "k2", "model": "m", "latency_s": 3.0, "ttft_s": 1.0, "tokens_in": 5,
                                   "tokens_out": 9, "attempts": 3}),
        ("WARNING", "request_failed", {"req": "k3", "model": "m", "latency_s": 1.0, "ttft_s": None, "attempts": 1,
                                       "last": "p", "outcome": "failed"}),
        ("INFO", "request_failed", {"req": "k4", "model": "nope", "latency_s": 0.0, "ttft_s": None, "attempts": 0,
                                    "outcome": "no-executor"}),
    ]
    assert rl.running() == 0  # nothing kept once requests end


# --- a routed request on the memory transport ----------------------------------------------------

MODEL = "m"


def fields_of(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [ev[1] for r in caplog.records if (ev := event_of(r)) is not None and ev[0] == name]


async def test_a_routed_request_logs_offloaded_accepted_payment_and_claim(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2pserve")
    gateway = parse_config({"models": []})
    executor = parse_config({"server_params": {"accept_frequency": 1.0},
                             "models": [{"model_path": MODEL, "backend": "fake", "price_per_1k": 2.0}]})
    # the chunks leave the executor in one write and reach the tracer as one delivery
    script = ("a", "b", "c")
    backends = lambda i: {} if i == 0 else {MODEL: ScriptedBackend(model=MODEL, script=script)}  # noqa: E731
    async with open_cluster([gateway, executor], network=MemoryNetwork(seed=7, default_latency=0.01), seed=7,
                            backends=backends) as c:
        gw, ex = c[0], c[1]
        with trio.fail_after(30):
            while not (gw.serve._candidates(MODEL, {}, set(), trio.current_time()) and gw.ledger.free()):
                await trio.sleep(0.1)
        async with gw.serve.submit("completion", MODEL, {"prompt": "hi", "max_tokens": 8}, key="req-1") as events:
            async for _ in events:
                pass
        with trio.fail_after(30):
            while not fields_of(caplog, "claim"):
                await trio.sleep(0.1)
        c.kill(1)
        with trio.fail_after(60):
            while not fields_of(caplog, "peer_lost"):
                await trio.sleep(0.5)

    joined = {f["peer"]: f for f in fields_of(caplog, "joined")}
    assert joined[gw.peer_id]["network"] == "devnet" and joined[gw.peer_id]["addrs"] == gw.transport.listen_addrs()
    assert joined[ex.peer_id]["models"] == [MODEL] and joined[ex.peer_id]["bootstrap"] == 1
    assert {(f["peer"]) for f in fields_of(caplog, "peer_seen")} == {gw.peer_id, ex.peer_id}
    assert [f["peer"] for f in fields_of(caplog, "peer_lost")] == [ex.peer_id]

    (off,) = fields_of(caplog, "request_offloaded")
    assert off["req"] == "req-1" and off["model"] == MODEL and off["peer"] == ex.peer_id
    assert (off["tokens_out"], off["price"]) == (3, 0.006)  # 3 tokens at 2 credits per 1k
    assert 0 < off["ttft_s"] <= off["latency_s"] < 1.0
    (acc,) = fields_of(caplog, "request_accepted")
    assert (acc["requester"], acc["model"], acc["tokens_out"], acc["price"]) == (gw.peer_id, MODEL, 3, 0.006)
    assert 0 <= acc["latency_s"] < off["latency_s"]
    (sent,) = fields_of(caplog, "payment_sent")
    assert (sent["payee"], sent["amount"], sent["receipts"]) == (ex.peer_id, 0.006, 1)
    (received,) = fields_of(caplog, "payment_received")
    assert (received["payer"], received["amount"]) == (gw.peer_id, 0.006)
    (claim,) = fields_of(caplog, "claim")
    assert (claim["payments"], claim["amount"]) == (1, 0.006)
    assert not fields_of(caplog, "request_failed") and not fields_of(caplog, "request_failover")


# --- the command line ---------------------------------------------------------------------------------


def only_error(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return result.exit_code, lines[0]


def test_bad_log_format_is_a_usage_error(tmp_path: Any, stderr_log: None) -> None:
    assert only_error("--log-format", "yaml", "join", "--data-dir", str(tmp_path)) == (
        2, "error: --log-format 'yaml' is not a log format (use one of human, json)")
    assert only_error("join", "--log-format", "xml", "--data-dir", str(tmp_path)) == (
        2, "error: --log-format 'xml' is not a log format (use one of human, json)")


# --- a duel ---------------------------------------------------------------------------------------


def duel_cfg(*, answers: str | None = None, duel_rate: float = 0.0, judge: bool = False) -> Any:
    return parse_config({
        "server_params": {"accept_frequency": 1.0, "duel_rate": duel_rate, "judge": judge, "judge_method": "fake"},
        "ledger_params": {"initial_staked": 10},
        "models": [{"model_path": MODEL, "backend": "fake", "fake": {"answers": answers}}] if answers else [],
    })


async def test_a_duel_logs_started_judged_and_the_verdict(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    from p2pserve.backends.registry import BackendSpec, build_backend

    caplog.set_level(logging.INFO, logger="p2pserve")
    configs = [duel_cfg(duel_rate=1.0), duel_cfg(answers="words"), duel_cfg(answers="noise"), duel_cfg(judge=True)]
    answers = {1: "words", 2: "noise"}

    def backends(i: int) -> dict[str, Any]:
        return {MODEL: build_backend(BackendSpec(MODEL, kind="fake", fake={"answers": answers[i]}))} if i in answers else {}

    async with open_cluster(configs, network=MemoryNetwork(seed=41), seed=41, backends=backends) as c:
        gw, judge = c[0], c[3]
        with trio.fail_after(120):
            while not (len(gw.peers.candidates(MODEL)) == 2 and gw.ledger.writable
                       and all(n.ledger.store.state.account(m.peer_id) for n in c.alive() for m in c.alive())
                       and any(e.status.judge for e in gw.peers.entries())):
                await trio.sleep(0.1)
            async with gw.serve.submit("chat", MODEL, {"messages": [{"role": "user", "content": "q"}]}, key="q0") as events:
                async for _ in events:
                    pass
            while gw.duels.running or not fields_of(caplog, "verdict"):
                await trio.sleep(0.1)
    (started,) = fields_of(caplog, "duel_started")
    (off,) = fields_of(caplog, "request_offloaded")
    assert (started["req"], started["model"], started["first"]) == ("q0", MODEL, off["peer"])
    (judged,) = fields_of(caplog, "duel_judged")
    (verdict,) = fields_of(caplog, "verdict")
    assert judged["judge"] == judge.peer_id and verdict["requester"] == gw.peer_id
    assert judged["order"] == verdict["order"] and judged["outcome"] == verdict["outcome"] in ("A", "B", "tie")
    assert {judged["a"], judged["b"]} == {c[1].peer_id, c[2].peer_id} and (verdict["a"], verdict["b"]) == (judged["a"], judged["b"])
    assert not fields_of(caplog, "duel_abandoned")
