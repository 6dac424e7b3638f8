"""Run a coroutine the way the pure-asyncio tests need it."""

import asyncio
import concurrent.futures


def run_isolated(coro):
    """Run on a fresh loop in its own thread: another test's library (Playwright's sync API) may
    keep an event loop running in the main thread, where asyncio.run() refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
