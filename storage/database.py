"""The SQLite file: one writer thread, a pool of read-only reader connections, and an async facade.

Why one writer thread: SQLite allows one writer at a time anyway. Funnelling every write through a single
thread and connection turns lock contention (SQLITE_BUSY, retries, `database is locked`) into a plain FIFO
queue, keeps transactions short and ordered, and lets async code `await db.write(fn)` without blocking the
event loop. Reads go to separate connections in a thread pool; in WAL mode they run concurrently with the
writer and each `read(fn)` sees one consistent snapshot.

Durability (why `synchronous=FULL`): in WAL mode a commit appends the transaction to the `-wal` file.
Once `write()` has returned, the commit has been handed to the kernel, so killing the *process* (SIGKILL,
OOM killer, a crash) cannot lose it at any synchronous level; the kill test checks exactly this.
`synchronous=FULL` additionally fsyncs the WAL at every commit, so a committed row also survives a power
cut, kernel panic or the VM being reset. With `NORMAL` the WAL is only synced at checkpoints and the last
few commits could vanish on power loss, which would break the scheduler's contract that a job is a row
before it is anything else (and a delivered-state row could roll back, causing a duplicate post). The cost
is one fsync per write transaction, negligible at a bot's write rate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

import sqlite_utils

from storage.migrations import apply_migrations, schema_version

log = logging.getLogger(__name__)

T = TypeVar("T")

_WriteItem = tuple[Callable[[sqlite_utils.Database], Any], "concurrent.futures.Future[Any]"]

DB_FILENAME = "bandmate.db"
DEFAULT_BUSY_TIMEOUT_MS = 5000


class DatabaseClosed(RuntimeError):
    """Raised by any call made after `close()`."""


def connect(
    path: str | os.PathLike[str], *, readonly: bool, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """Open one connection with Bandmate's pragmas.

    `isolation_level=None` turns off the sqlite3 module's implicit BEGINs: transactions are opened
    explicitly by `Database`, so what is and is not atomic is visible in the code.
    `check_same_thread=False` because reader connections are pooled across threads (each is used by one
    thread at a time) and `close()` may run on another thread than the one that opened them.
    """
    conn = sqlite3.connect(
        os.fspath(path),
        timeout=busy_timeout_ms / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"could not switch {path} to WAL (journal_mode={mode})")
        # Also on readers: the last connection to close runs the final checkpoint, at its own sync level.
        conn.execute("PRAGMA synchronous = FULL")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _reject_lazy(result: object) -> None:
    # A generator (e.g. `db.query(...)` returned as is) would be consumed after the transaction ended,
    # on a connection another thread may be using by then.
    if inspect.isgenerator(result) or inspect.isasyncgen(result) or isinstance(result, sqlite3.Cursor):
        raise TypeError("database callbacks must return materialised values (e.g. list(db.query(...))), not iterators")


class Database:
    """A Bandmate SQLite file. Thread-safe; create one per process and share it.

    Sync API (for plain threads): `write_sync(fn)`, `read_sync(fn)`. Async API: `await write(fn)`,
    `await read(fn)`. `fn` receives a `sqlite_utils.Database` and must return materialised values.

    - `write(fn)` runs `fn(db)` on the single writer thread inside `BEGIN IMMEDIATE ... COMMIT`; an
      exception rolls the whole callback back and is re-raised to the caller. Writes run in submission
      order. When it returns, the transaction is committed (and fsynced, see the module docstring).
      If the awaiting task is cancelled, the write either never starts or runs to completion; it is
      never half-applied.
    - `read(fn)` runs `fn(db)` on a read-only connection inside one read transaction (a snapshot).

    Migrations are applied on open (on the writer connection, before any other call can run).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readers: int = 4,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        migrate: bool = True,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._migrate = migrate
        self._queue: queue.SimpleQueue[_WriteItem | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _closed, the queue's sentinel, and the idle reader pool
        self._closed = False
        self._idle_readers: list[sqlite_utils.Database] = []
        self._read_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, readers), thread_name_prefix=f"sqlite-read:{self.path.name}"
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Daemon: an interpreter exiting without close() must not hang on the writer's queue. Anything
        # not yet committed at that point simply never happened; SQLite's WAL keeps the file consistent.
        self._writer = threading.Thread(
            target=self._writer_loop, args=(started,), name=f"sqlite-write:{self.path.name}", daemon=True
        )
        self._writer.start()
        try:
            started.result()
        except BaseException:
            self._closed = True
            self._writer.join()
            self._read_executor.shutdown(wait=False)
            raise
        log.debug("opened %s", self.path)

    # --- writer -------------------------------------------------------------------------------------

    def _writer_loop(self, started: concurrent.futures.Future[None]) -> None:
        try:
            db = sqlite_utils.Database(
                connect(self.path, readonly=False, busy_timeout_ms=self._busy_timeout_ms), execute_plugins=False
            )
        except BaseException as exc:
            started.set_exception(exc)
            return
        try:
            if self._migrate:
                apply_migrations(db)
        except BaseException as exc:
            db.close()
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                fn, fut = item
                if not fut.set_running_or_notify_cancel():
                    continue  # cancelled before it started: nothing was applied
                try:
                    result = self._run_write(db, fn)
                except BaseException as exc:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
        finally:
            db.close()

    @staticmethod
    def _run_write(db: sqlite_utils.Database, fn: Callable[[sqlite_utils.Database], T]) -> T:
        conn = db.conn
        # IMMEDIATE takes the write lock up front, so another process holding it makes us wait
        # (busy_timeout) here rather than fail half-way through the callback.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            _reject_lazy(result)
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _submit(self, fn: Callable[[sqlite_utils.Database], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:  # same lock as close(): nothing can be queued behind the stop sentinel
            if self._closed:
                raise DatabaseClosed(f"{self.path} is closed")
            self._queue.put((fn, fut))
        return fut

    def write_sync(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `fn(db)` in a write transaction on the writer thread; block until committed."""
        if threading.current_thread() is self._writer:
            raise RuntimeError("write_sync() called from inside a write callback; use the db it was given")
        return self._submit(fn).result()

    async def write(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `fn(db)` in a write transaction on the writer thread; return once committed."""
        return await asyncio.wrap_future(self._submit(fn))

    # --- readers ------------------------------------------------------------------------------------

    def _checkout(self) -> sqlite_utils.Database:
        with self._lock:
            if self._closed:
                raise DatabaseClosed(f"{self.path} is closed")
            if self._idle_readers:
                return self._idle_readers.pop()
        return sqlite_utils.Database(
            connect(self.path, readonly=True, busy_timeout_ms=self._busy_timeout_ms), execute_plugins=False
        )

    def _checkin(self, db: sqlite_utils.Database) -> None:
        with self._lock:
            if not self._closed:
                self._idle_readers.append(db)
                return
        db.close()

    def read_sync(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `fn(db)` on a read-only connection, in one read transaction (a consistent snapshot)."""
        db = self._checkout()
        try:
            db.conn.execute("BEGIN")
            try:
                result = fn(db)
                _reject_lazy(result)
            finally:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
        except BaseException:
            self._checkin(db)
            raise
        self._checkin(db)
        return result

    async def read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `fn(db)` on a reader connection in the read thread pool."""
        if self._closed:
            raise DatabaseClosed(f"{self.path} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._read_executor, self.read_sync, fn)
        except RuntimeError as exc:  # executor shut down between the check and the submit
            if self._closed:
                raise DatabaseClosed(f"{self.path} is closed") from exc
            raise

    # --- maintenance --------------------------------------------------------------------------------

    def integrity_check(self) -> str:
        """`PRAGMA integrity_check` output: exactly "ok" for a healthy file, otherwise the problems found."""

        def check(db: sqlite_utils.Database) -> str:
            return "\n".join(str(row[0]) for row in db.conn.execute("PRAGMA integrity_check"))

        return self.read_sync(check)

    def schema_version(self) -> int:
        """Highest applied migration."""
        return self.read_sync(schema_version)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Finish queued writes, then close every connection. Idempotent; safe from any thread but the writer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if threading.current_thread() is not self._writer:
            self._writer.join()
        self._read_executor.shutdown(wait=True)
        with self._lock:
            idle, self._idle_readers = self._idle_readers, []
        for db in idle:
            db.close()
        log.debug("closed %s", self.path)

    async def aclose(self) -> None:
        """`close()` without blocking the event loop while queued writes drain."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Database {self.path}{' closed' if self._closed else ''}>"
