"""open_service_nursery: one exception out of a nursery, never an exception group."""

from __future__ import annotations

import pickle
import traceback
import warnings

import pytest
import trio

import engine
from engine._nurseries import open_service_nursery


class AppError(Exception):
    """An exception of the caller's own."""


async def _fail_now(error: BaseException) -> None:
    raise error  # before any checkpoint: a sibling's failure cannot cancel it first


async def _fail_soon(error: BaseException, delay: float = 0.0) -> None:
    await trio.sleep(delay)
    raise error


async def test_a_body_exception_leaves_as_the_same_object_with_cause_and_context(autojump_clock):
    """The body's exception is the one caught, its __cause__ and __context__ untouched."""
    cause, context = KeyError("cause"), LookupError("context")
    error = AppError("mine")
    with pytest.raises(AppError) as caught:
        async with open_service_nursery("owner") as nursery:
            nursery.start_soon(trio.sleep_forever)
            try:
                raise context
            except LookupError:
                raise error from cause
    assert caught.value is error
    assert error.__cause__ is cause and error.__context__ is context


async def test_a_body_exception_without_context_gets_none_not_the_group(autojump_clock):
    """Raised again by the nursery, the body's exception does not take the group as context."""
    error = AppError("mine")
    with pytest.raises(AppError):
        async with open_service_nursery("owner"):
            raise error
    assert error.__context__ is None and error.__cause__ is None


async def test_nested_service_nurseries_unwrap_a_body_exception_once_each(autojump_clock):
    """Two service nurseries around a body (as in open_client) still give the bare exception."""
    error = AppError("deep")
    with pytest.raises(AppError) as caught:
        async with open_service_nursery("outer") as outer, open_service_nursery("inner") as inner:
            outer.start_soon(trio.sleep_forever)
            inner.start_soon(trio.sleep_forever)
            raise error
    assert caught.value is error


async def test_a_group_from_the_callers_own_nursery_leaves_as_that_group(autojump_clock):
    """A body's own nursery failing is the body's exception: its group leaves unchanged."""
    raised: list[BaseException] = []
    with pytest.raises(ExceptionGroup) as caught:
        async with open_service_nursery("owner") as service:
            service.start_soon(trio.sleep_forever)
            try:
                async with trio.open_nursery() as mine:
                    mine.start_soon(_fail_now, AppError("first"))
                    mine.start_soon(_fail_now, AppError("second"))
            except BaseException as exc:
                raised.append(exc)
                raise
    assert caught.value is raised[0]
    assert sorted(str(leaf) for leaf in caught.value.exceptions) == ["first", "second"]


async def test_a_background_failure_is_one_background_task_error_caused_by_the_group(
    autojump_clock,
):
    """A task's failure cancels the body and leaves as BackgroundTaskError(owner) from the group."""
    failure = RuntimeError("worker bug")
    with pytest.raises(engine.BackgroundTaskError) as caught:
        async with open_service_nursery("open_thing") as nursery:
            nursery.start_soon(_fail_soon, failure, 1.0)
            await trio.sleep_forever()
    error = caught.value
    assert isinstance(error, engine.EngineError) and not isinstance(error, BaseExceptionGroup)
    assert error.owner == "open_thing" and error.code == "background_task_failed"
    assert "open_thing" in str(error) and "RuntimeError: worker bug" in str(error)
    group = error.__cause__
    assert isinstance(group, BaseExceptionGroup)
    assert list(group.exceptions) == [failure]  # the body's Cancelled is left out


async def test_the_traceback_of_a_background_failure_shows_the_failing_task(autojump_clock):
    """The formatted traceback carries the cause: the task's frame and its message."""
    with pytest.raises(engine.BackgroundTaskError) as caught:
        async with open_service_nursery("owner") as nursery:
            nursery.start_soon(_fail_soon, ValueError("bad value in task"))
    text = "".join(traceback.format_exception(caught.value))
    assert "_fail_soon" in text and "ValueError: bad value in task" in text
    assert "The above exception was the direct cause" in text


async def test_a_body_and_a_background_failure_together_are_one_error_holding_both(autojump_clock):
    """When the body and a task both fail, the task's failure wins and the group keeps both."""
    mine, theirs = AppError("mine"), RuntimeError("theirs")

    async def fail_while_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise theirs

    with pytest.raises(engine.BackgroundTaskError) as caught:
        async with open_service_nursery("owner") as nursery:
            nursery.start_soon(fail_while_cancelled)
            await trio.sleep(1)
            raise mine
    group = caught.value.__cause__
    assert isinstance(group, BaseExceptionGroup)
    assert set(map(id, group.exceptions)) == {id(mine), id(theirs)}


async def test_cancelling_an_enclosing_scope_still_works(autojump_clock):
    """move_on_after around the nursery catches the cancellation; the code after it runs."""
    with trio.move_on_after(5) as scope:
        async with open_service_nursery("owner") as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_cancellation_leaves_as_one_cancelled_not_a_group(autojump_clock):
    """What passes through on an outer cancellation is a plain trio.Cancelled."""
    seen: list[BaseException] = []
    with trio.CancelScope() as scope:
        try:
            async with open_service_nursery("owner") as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(trio.sleep_forever)
                scope.cancel()
                await trio.sleep_forever()
        except BaseException as exc:
            seen.append(exc)
            raise
    assert scope.cancelled_caught
    assert len(seen) == 1 and type(seen[0]) is trio.Cancelled


async def test_a_keyboard_interrupt_in_the_body_passes_through_unchanged(autojump_clock):
    """Ctrl-C in the body leaves as that same KeyboardInterrupt."""
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as caught:
        async with open_service_nursery("owner") as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise interrupt
    assert caught.value is interrupt


async def test_a_keyboard_interrupt_in_a_task_leaves_as_keyboard_interrupt(autojump_clock):
    """Ctrl-C landing in a background task is a KeyboardInterrupt, not a BackgroundTaskError."""
    interrupt, failure = KeyboardInterrupt(), RuntimeError("also failed")

    async def fail_while_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise failure

    with pytest.raises(KeyboardInterrupt) as caught:
        async with open_service_nursery("owner") as nursery:
            nursery.start_soon(fail_while_cancelled)
            nursery.start_soon(_fail_soon, interrupt, 1.0)
            await trio.sleep_forever()
    group = caught.value.__cause__
    assert isinstance(group, BaseExceptionGroup)
    assert set(map(id, group.exceptions)) == {id(interrupt), id(failure)}


async def test_a_clean_exit_waits_for_the_tasks(autojump_clock):
    """Without failures, leaving the block waits for the tasks like any nursery."""
    finished: list[str] = []

    async def work() -> None:
        await trio.sleep(3)
        finished.append("work")

    async with open_service_nursery("owner") as nursery:
        nursery.start_soon(work)
    assert finished == ["work"]


def test_without_strict_exception_groups_the_rules_are_the_same():
    """Under trio's deprecated non-strict mode a body error and a task failure come out alike."""
    error = AppError("mine")

    async def body_fails() -> None:
        async with open_service_nursery("owner") as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise error

    async def task_fails() -> None:
        async with open_service_nursery("owner") as nursery:
            nursery.start_soon(_fail_soon, RuntimeError("task"))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", trio.TrioDeprecationWarning)
        with pytest.raises(AppError) as caught:
            trio.run(body_fails, strict_exception_groups=False)
        assert caught.value is error and error.__context__ is None
        with pytest.raises(engine.BackgroundTaskError) as failed:
            trio.run(task_fails, strict_exception_groups=False)
    assert isinstance(failed.value.__cause__, RuntimeError)


def test_background_task_error_keeps_its_owner_through_pickling():
    """Pickling (e.g. to another process) keeps the owner and the code."""
    error = engine.BackgroundTaskError("open_client: a background task failed", owner="open_client")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is engine.BackgroundTaskError
    assert (copy.owner, copy.code, copy.message) == (error.owner, error.code, error.message)
