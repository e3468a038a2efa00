"""Nurseries whose failures leave as one exception, never an exception group.

A public context manager that runs background tasks in a trio nursery would
otherwise hand its caller an exception group for every failure: trio wraps
whatever leaves a nursery — the caller's own exception included — in a
``BaseExceptionGroup``, and a context manager holding two nurseries wraps it
twice, so ``except engine.EngineError:`` around ``client.chat`` never ran.
:func:`open_service_nursery` turns what leaves the nursery back into one
exception, by these rules, first match wins:

1. ``KeyboardInterrupt``: the body's own, unchanged, if the body raised one;
   else, if a background task got one, a new one caused by the group.
2. A background task failed with anything but ``trio.Cancelled``:
   :class:`~engine.BackgroundTaskError` naming the owner, caused by the group
   (``Cancelled`` leaves removed; the body's exception, if any, stays in it).
   The engine's own failure is the root cause: a caller's handler for its own
   exception must not swallow it.
3. The body raised: that exception, the same object, its ``__cause__`` and
   ``__context__`` as they were — an exception group too, when the caller's
   own nursery in the body raised one.
4. Only cancellation: one ``trio.Cancelled`` (the body's, else the first), so
   the enclosing cancel scope that was cancelled catches it as usual.

The same pitfalls trio-websocket met (python-trio/trio-websocket#188, #192)
are avoided: an exception raised again from inside ``except group:`` would get
the group — which contains it — as its ``__context__``; it is restored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import NoReturn

import trio

from engine._errors import BackgroundTaskError

__all__ = ["open_service_nursery"]


@asynccontextmanager
async def open_service_nursery(owner: str) -> AsyncIterator[trio.Nursery]:
    """A nursery whose failures leave as one exception, never an exception group.

    ``owner`` names the public entry point that holds the nursery (for example
    ``"open_client"``); it appears in the :class:`~engine.BackgroundTaskError`
    message.  The body's own exception leaves unchanged; a failure of the
    tasks started in the nursery leaves as ``BackgroundTaskError`` with the
    exception group as ``__cause__``; ``trio.Cancelled`` and
    ``KeyboardInterrupt`` pass through (see the module docstring for the
    exact rules).  Entering does not checkpoint; leaving waits for the tasks,
    like any nursery.

    Raises:
        BackgroundTaskError: a task in the nursery failed.
        KeyboardInterrupt, trio.Cancelled: as they reached the nursery.
        BaseException: whatever the body raised, unchanged.
    """
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                body_error = exc
                raise
    except BaseException as exc:
        try:
            _raise_one(owner, exc, body_error)
        finally:
            # The frame holds the exceptions and they hold the frame: break
            # the cycle so a long-lived caller does not keep them alive.
            del exc, body_error


def _raise_one(owner: str, error: BaseException, body_error: BaseException | None) -> NoReturn:
    """Raise the one exception that stands for ``error``, which left the nursery.

    ``body_error`` is what the nursery's body raised, if anything.  Called
    inside the ``except`` block that caught ``error``.
    """
    if error is body_error:
        # Non-strict exception groups collapse a lone exception: nothing to unwrap.
        _reraise(error)
    # What came from the body is told apart by its leaves, not by the object
    # the body raised: a group raised by the body (the caller's own nursery)
    # reaches ``error`` as a copy, because cancel scopes split groups on the
    # way out; the leaves inside stay the same objects.
    from_body = {id(leaf) for leaf in _leaves(body_error)} if body_error is not None else set()
    background = [leaf for leaf in _leaves(error) if id(leaf) not in from_body]
    if isinstance(body_error, KeyboardInterrupt):
        _reraise(body_error)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in background):
        raise KeyboardInterrupt from error
    failures = [leaf for leaf in background if not isinstance(leaf, trio.Cancelled)]
    if failures:
        cause = _without_cancelled(error)
        first = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise BackgroundTaskError(
            f"{owner}: a background task failed: {type(first).__name__}: {first}{more}",
            owner=owner,
        ) from cause
    if body_error is not None:
        _reraise(body_error)
    _reraise(background[0])  # only Cancelled left the nursery


def _leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions in ``error`` that are not groups, depth first."""
    if isinstance(error, BaseExceptionGroup):
        for member in error.exceptions:
            yield from _leaves(member)
    else:
        yield error


def _without_cancelled(error: BaseException) -> BaseException:
    """``error`` with its ``trio.Cancelled`` leaves removed (there is at least one other)."""
    if not isinstance(error, BaseExceptionGroup):
        return error
    _cancelled, rest = error.split(trio.Cancelled)
    assert rest is not None
    return rest


def _reraise(error: BaseException) -> NoReturn:
    """Raise ``error`` again with the ``__context__`` it had.

    Raised inside ``except group:``, Python would set its ``__context__`` to
    the group, which contains ``error`` itself: the traceback would show the
    exception inside its own context and lose the context it really had.
    """
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context
