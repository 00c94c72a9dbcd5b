"""The recorder on its own, on SQLite and PostgreSQL: aggregation per minute, percentiles from the
histogram, flushes (background, at stop, failed and retried), and several recorders (processes) on one
database adding up."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from modelyard.db.engine import Database
from modelyard.usage import histogram, service
from modelyard.usage.recorder import OTHER_MODEL, UsageRecorder
from tests.usage.conftest import Clock

T0 = "2026-11-30T10:15:00"


def read(db: Database, granularity: str = "minute", model: str | None = None, workspace: str = "default",
         start: str = "2026-11-30T00:00:00Z", end: str = "2026-12-01T00:00:00Z") -> list[dict]:
    first, last, _ = service.window(granularity, start, end)
    with db.session() as session:
        answer = service.list_(session, workspace, model=model, granularity=granularity, first_minute=first,
                               end_minute=last)
    return [r.model_dump() for r in answer.data]


def rows_in_db(db: Database) -> int:
    with db.session() as session:
        return session.scalar(sa.text("SELECT count(*) FROM usage_minutes"))


def hit(rec: UsageRecorder, model: str = "pirate", *, ok: bool = True, latency_s: float = 0.1,
        endpoint_id: str | None = "ep-1", workspace: str = "default", tokens: tuple[int, int] = (10, 5)) -> None:
    rec.record(workspace=workspace, model=model, endpoint_id=endpoint_id, ok=ok, prompt_tokens=tokens[0],
               completion_tokens=tokens[1], latency_s=latency_s)


def test_histogram_buckets_and_percentiles() -> None:
    assert histogram.bucket_of(0.0005) == 0 and histogram.bucket_of(-1) == 0 and histogram.bucket_of(math.nan) == 0
    assert histogram.bucket_of(1e9) == histogram.BUCKETS - 1 and histogram.bucket_of(math.inf) == histogram.BUCKETS - 1
    for ms in (1.5, 3, 10, 42, 100, 250, 999, 5_000, 60_000, 600_000):
        estimate = histogram.representative_ms(histogram.bucket_of(ms / 1000))
        assert abs(estimate / ms - 1) <= 2 ** (1 / 8) - 1 + 1e-9, (ms, estimate)
    counts = [0] * histogram.BUCKETS
    for ms in range(1, 101):  # 1 ms .. 100 ms, one each
        counts[histogram.bucket_of(ms / 1000)] += 1
    for q, true in ((0.5, 50), (0.95, 95), (0.99, 99)):
        assert abs(histogram.percentile(counts, q) / true - 1) <= 0.1, q
    assert histogram.percentile([0] * histogram.BUCKETS, 0.5) is None


def test_aggregates_per_minute_model_and_endpoint(db: Database) -> None:
    clock = Clock(0).at(T0)
    rec = UsageRecorder(db, clock=clock)
    for i in range(100):
        hit(rec, latency_s=(i + 1) / 1000)  # 1..100 ms
    hit(rec, ok=False, latency_s=30.0)  # an error: counted, its latency not
    hit(rec, "pirate", endpoint_id=None, tokens=(7, 0))  # the same model through no endpoint of ours
    hit(rec, "base")
    clock.now += 60
    hit(rec, "pirate", tokens=(1, 1))
    assert rec.flush() == 4 and rec.pending() == 0
    rows = read(db)
    assert [(r["start"], r["model"], r["endpoint_id"]) for r in rows] == [
        ("2026-11-30T10:15:00Z", "base", "ep-1"),
        ("2026-11-30T10:15:00Z", "pirate", None),
        ("2026-11-30T10:15:00Z", "pirate", "ep-1"),
        ("2026-11-30T10:16:00Z", "pirate", "ep-1"),
    ]
    pirate = rows[2]
    assert (pirate["requests"], pirate["errors"], pirate["prompt_tokens"], pirate["completion_tokens"]) == (
        101, 1, 1010, 505)
    assert pirate["workspace"] == "default" and pirate["granularity"] == "minute"
    p = pirate["latency_ms"]
    assert abs(p["p50"] / 50 - 1) < 0.1 and abs(p["p95"] / 95 - 1) < 0.1 and abs(p["p99"] / 99 - 1) < 0.1
    assert rows[1]["prompt_tokens"] == 7 and rows[3]["requests"] == 1
    hourly = read(db, "hour", model="pirate")
    assert [(r["start"], r["endpoint_id"], r["requests"]) for r in hourly] == [
        ("2026-11-30T10:00:00Z", None, 1), ("2026-11-30T10:00:00Z", "ep-1", 102)]
    daily = read(db, "day")
    assert [(r["start"], r["model"], r["requests"]) for r in daily] == [
        ("2026-11-30T00:00:00Z", "base", 1), ("2026-11-30T00:00:00Z", "pirate", 1), ("2026-11-30T00:00:00Z", "pirate", 102)]


def test_errors_only_has_no_percentiles(db: Database) -> None:
    rec = UsageRecorder(db, clock=Clock(0).at(T0))
    hit(rec, ok=False)
    rec.flush()
    [row] = read(db)
    assert (row["requests"], row["errors"]) == (1, 1)
    assert row["latency_ms"] == {"p50": None, "p95": None, "p99": None}


def test_flush_writes_totals_only_once_and_keeps_counting(db: Database) -> None:
    clock = Clock(0).at(T0)
    rec = UsageRecorder(db, clock=clock)
    hit(rec)
    assert rec.flush() == 1
    assert rec.flush() == 0  # nothing changed: nothing written
    hit(rec)
    hit(rec)
    assert rec.flush() == 1
    assert [r["requests"] for r in read(db)] == [3]
    assert rows_in_db(db) == 1  # the same aggregate, the same row


def test_failed_flush_is_kept_and_retried_without_double_counting(db: Database) -> None:
    clock = Clock(0).at(T0)
    rec = UsageRecorder(db, clock=clock)
    for _ in range(5):
        hit(rec)
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/nothing")  # connection refused: an outage
    rec.db = down
    try:
        with pytest.raises(sa_exc.OperationalError):
            rec.flush()
    finally:
        rec.db = db
        down.dispose()
    assert rec.pending() == 5 and read(db) == []
    hit(rec)
    # a commit whose answer is lost: written, yet the flush reports a failure and keeps it pending
    real_write = rec._write

    def lost_answer(snapshots):  # type: ignore[no-untyped-def]
        real_write(snapshots)
        raise sa_exc.OperationalError("COMMIT", {}, Exception("connection lost"))

    rec._write = lost_answer  # type: ignore[method-assign]
    with pytest.raises(sa_exc.OperationalError):
        rec.flush()
    rec._write = real_write  # type: ignore[method-assign]
    assert [r["requests"] for r in read(db)] == [6]
    assert rec.flush() == 1  # written again: the same totals
    assert [r["requests"] for r in read(db)] == [6] and rec.pending() == 0


def test_two_recorders_are_two_processes_on_one_database(db: Database, database_url: str) -> None:
    clock = Clock(0).at(T0)
    other_db = Database(database_url)  # a second process has its own engine
    one, two = UsageRecorder(db, clock=clock), UsageRecorder(other_db, clock=clock)
    try:
        for _ in range(3):
            hit(one, latency_s=0.010)
        for _ in range(4):
            hit(two, latency_s=1.0)
        hit(two, ok=False)
        one.flush()
        two.flush()
        hit(one, latency_s=0.010)  # more after a flush: the row is rewritten, not added to twice
        one.flush()
        two.flush()
        [row] = read(db)
        assert (row["requests"], row["errors"], row["prompt_tokens"]) == (9, 1, 90)
        assert abs(row["latency_ms"]["p50"] / 10 - 1) < 0.1  # 4 of 8 successes at 10 ms
        assert abs(row["latency_ms"]["p95"] / 1000 - 1) < 0.1
        assert rows_in_db(db) == 2
    finally:
        other_db.dispose()


def test_old_minutes_leave_memory_once_written(db: Database) -> None:
    clock = Clock(0).at(T0)
    rec = UsageRecorder(db, clock=clock)
    hit(rec)
    rec.flush()
    assert len(rec._aggregates) == 1
    clock.now += 60  # one minute of grace
    rec.flush()
    assert len(rec._aggregates) == 1
    clock.now += 60
    rec.flush()
    assert rec._aggregates == {}
    hit(rec)
    rec.flush()
    assert [r["requests"] for r in read(db)] == [1, 1]


def test_unwritten_minutes_stay_in_memory(db: Database) -> None:
    clock = Clock(0).at(T0)
    rec = UsageRecorder(db, clock=clock)
    hit(rec)
    clock.now += 600
    rec.db = Database("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    with pytest.raises(sa_exc.OperationalError):
        rec.flush()
    rec.db.dispose()
    rec.db = db
    assert rec.pending() == 1
    rec.flush()
    assert [r["requests"] for r in read(db)] == [1] and rec._aggregates == {}


def test_start_flushes_in_the_background_and_stop_flushes_the_rest(db: Database) -> None:
    rec = UsageRecorder(db, flush_interval=0.05)  # the real clock

    async def scenario() -> tuple[int, int]:
        await rec.start()
        hit(rec)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if rows_in_db(db):
                break
        background = rows_in_db(db)
        rec.flush_interval = 3600  # the next background pass never comes: stop must write this one
        await asyncio.sleep(0.1)
        hit(rec, "base")
        await rec.stop()
        return background, rec.pending()

    background, pending = asyncio.run(scenario())
    assert background == 1 and pending == 0
    assert sorted(r["model"] for r in read(db, "hour", start=None, end=None)) == ["base", "pirate"]  # last 24 h


def test_stop_with_the_database_down_logs_the_loss(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    rec = UsageRecorder(db, clock=Clock(0).at(T0))
    hit(rec)
    rec.db = Database("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    asyncio.run(rec.stop())
    rec.db.dispose()
    assert any("lost at stop" in r.message and getattr(r, "pending_requests", None) == 1 for r in caplog.records)


def test_names_the_database_refuses_are_cleaned_and_keys_are_bounded(db: Database) -> None:
    rec = UsageRecorder(db, clock=Clock(0).at(T0), max_keys=3)
    hit(rec, "bad\x00name" + "x" * 400)  # NUL (PostgreSQL refuses it), longer than the column
    hit(rec, "a")
    hit(rec, "b")
    hit(rec, "c")  # over max_keys: counted under OTHER_MODEL
    hit(rec, "d")
    rec.flush()
    rows = read(db)
    assert sorted(r["model"] for r in rows) == sorted([OTHER_MODEL, "a", "b", "badname" + "x" * 248])
    assert {r["model"]: r["requests"] for r in rows}[OTHER_MODEL] == 2


def test_record_is_cheap() -> None:
    rec = UsageRecorder(None)  # type: ignore[arg-type]  # record never touches the database
    n = 20_000
    started = time.perf_counter()
    for i in range(n):
        rec.record(workspace="default", model="pirate", endpoint_id="ep-1", ok=i % 10 != 0, prompt_tokens=10,
                   completion_tokens=20, latency_s=0.1)
    per_call_us = (time.perf_counter() - started) / n * 1e6
    assert per_call_us < 50, per_call_us  # a few microseconds; generous for a loaded CI machine


def test_flushes_racing_records_lose_nothing(db: Database) -> None:
    """``record`` on one thread (the event loop's), flushes on another (a worker's), all the time: the
    totals written at the end are exact."""
    rec = UsageRecorder(db, clock=Clock(0).at(T0))
    done = threading.Event()
    flushes = 0

    def flusher() -> None:
        nonlocal flushes
        while not done.is_set():
            rec.flush()
            flushes += 1

    thread = threading.Thread(target=flusher)
    thread.start()
    n = 30_000
    for i in range(n):
        hit(rec, model=("pirate", "base")[i % 2], latency_s=0.001 * (i % 50))
        if i % 1000 == 0:
            time.sleep(0.001)  # let the flusher in
    done.set()
    thread.join()
    rec.flush()
    rows = read(db)
    assert flushes > 2
    assert [(r["model"], r["requests"], r["prompt_tokens"]) for r in rows] == [
        ("base", n // 2, 10 * n // 2), ("pirate", n // 2, 10 * n // 2)]


SCRIPT = """
import sys
from modelyard.db.engine import Database
from modelyard.usage.recorder import UsageRecorder

db = Database(sys.argv[1])
rec = UsageRecorder(db, clock=lambda: float(sys.argv[2]))
for _ in range(int(sys.argv[3])):
    rec.record(workspace="default", model="pirate", endpoint_id="ep-1", ok=True, prompt_tokens=10,
               completion_tokens=5, latency_s=0.1)
rec.flush()
db.dispose()
"""


def test_server_processes_add_up(db: Database, database_url: str) -> None:
    """Three real processes record the same model in the same minute; this one reads the sum."""
    clock = Clock(0).at(T0)
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, database_url, str(clock.now), str(n)])
             for n in (5, 7, 11)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    rec = UsageRecorder(db, clock=clock)
    hit(rec)
    rec.flush()
    [row] = read(db)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (24, 240, 120)
    assert rows_in_db(db) == 4
