"""The actors' inboxes: delivery in order, back-pressure, closing, and no needless turn."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from conveyor._actors.mailbox import Mailbox

pytestmark = pytest.mark.anyio


async def test_messages_are_received_in_the_order_they_were_sent() -> None:
    mailbox = Mailbox[int]()
    for n in range(3):
        mailbox.send_nowait(n)
    assert [await mailbox.receive() for _ in range(3)] == [0, 1, 2]


async def test_its_length_counts_the_messages_not_yet_received() -> None:
    mailbox = Mailbox[int]()
    assert not mailbox
    mailbox.send_nowait(1)
    mailbox.send_nowait(2)
    assert len(mailbox) == 2
    await mailbox.receive()
    assert len(mailbox) == 1


async def test_a_waiting_message_is_received_without_letting_other_tasks_run() -> None:
    mailbox = Mailbox[str]()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        mailbox.send_nowait("hello")
        assert await mailbox.receive() == "hello"
        assert ran == []
    assert ran == ["other"]


async def test_a_receiver_waits_for_the_next_message() -> None:
    mailbox = Mailbox[str]()
    received: list[str] = []

    async def receive() -> None:
        received.append(await mailbox.receive())

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        assert received == []
        mailbox.send_nowait("late")
    assert received == ["late"]


async def test_a_full_mailbox_refuses_a_message_sent_without_waiting() -> None:
    mailbox = Mailbox[int](capacity=1)
    mailbox.send_nowait(1)
    with pytest.raises(anyio.WouldBlock):
        mailbox.send_nowait(2)


async def test_a_sender_to_a_full_mailbox_waits_for_room() -> None:
    mailbox = Mailbox[int](capacity=1)
    mailbox.send_nowait(1)
    sent = anyio.Event()

    async def send() -> None:
        await mailbox.send(2)
        sent.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        await anyio.wait_all_tasks_blocked()
        assert not sent.is_set()
        assert await mailbox.receive() == 1
    assert sent.is_set()
    assert mailbox.receive_nowait() == 2


async def test_receiving_from_an_empty_mailbox_without_waiting_would_block() -> None:
    with pytest.raises(anyio.WouldBlock):
        Mailbox[int]().receive_nowait()


async def test_a_closed_mailbox_refuses_new_messages() -> None:
    mailbox = Mailbox[int]()
    mailbox.close()
    with pytest.raises(anyio.BrokenResourceError):
        mailbox.send_nowait(1)
    with pytest.raises(anyio.BrokenResourceError):
        await mailbox.send(1)


async def test_messages_sent_before_closing_are_still_received_then_it_is_closed() -> None:
    mailbox = Mailbox[int]()
    mailbox.send_nowait(1)
    mailbox.close()
    assert await mailbox.receive() == 1
    with pytest.raises(anyio.ClosedResourceError):
        await mailbox.receive()


async def error_of_a_wait_that_closing_ends(
    mailbox: Mailbox[int], wait: Callable[[], Awaitable[object]]
) -> Exception:
    """What ``wait`` raised when ``mailbox`` was closed while it waited."""
    errors: list[Exception] = []

    async def waiter() -> None:
        try:
            await wait()
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        mailbox.close()
    (error,) = errors
    return error


async def test_closing_ends_the_wait_of_a_receiver() -> None:
    mailbox = Mailbox[int]()
    error = await error_of_a_wait_that_closing_ends(mailbox, mailbox.receive)
    assert isinstance(error, anyio.ClosedResourceError)


async def test_closing_ends_the_wait_of_a_sender_with_an_error() -> None:
    mailbox = Mailbox[int](capacity=1)
    mailbox.send_nowait(1)
    error = await error_of_a_wait_that_closing_ends(mailbox, lambda: mailbox.send(2))
    assert isinstance(error, anyio.BrokenResourceError)


async def test_a_cancelled_receiver_gets_no_message_even_if_one_waits() -> None:
    mailbox = Mailbox[int]()
    mailbox.send_nowait(1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await mailbox.receive()
    assert scope.cancelled_caught
    assert mailbox.receive_nowait() == 1
