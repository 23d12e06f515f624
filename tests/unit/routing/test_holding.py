"""A route's held requests get their turns one by one in the admission order (gateway.routing.holding)."""

from __future__ import annotations

from gateway.fair_share import Claim
from gateway.routing.holding import HeldQueue, Place


def turns(places: dict[str, Place]) -> list[str]:
    return [name for name, place in places.items() if place.turn.done() and not place.turn.cancelled()]


async def test_one_turn_at_a_time_passed_on_in_order() -> None:
    queue = HeldQueue()
    places = {name: queue.join(Claim(priority, key)) for name, key, priority in [("a0", "a", 0), ("a1", "a", 0)]}
    places |= {"b0": queue.join(Claim(0, "b")), "urgent": queue.join(Claim(-1, "a"))}
    assert turns(places) == [] and len(queue) == 4
    queue.release()
    assert turns(places) == ["urgent"]
    queue.release()  # the turns go round already: nothing more until the one whose turn it is passes it on
    queue.pass_on(places["a0"])  # not its turn: nothing
    assert turns(places) == ["urgent"]
    order = ["urgent"]
    for _ in range(3):
        queue.pass_on(places[order[-1]])
        order += [name for name in turns(places) if name not in order]
    assert order == ["urgent", "a0", "b0", "a1"] and len(queue) == 0


async def test_a_turn_with_no_instance_keeps_its_place_and_one_that_left_passes_it_on() -> None:
    queue = HeldQueue()
    first, second, third = (queue.join(Claim(0, key)) for key in "abc")
    queue.release()
    assert first.turn.done()
    again = queue.hold_again(first)  # its turn came, but the instance went down again: the turns stop
    assert not again.turn.done() and not second.turn.done() and len(queue) == 3
    queue.release()
    assert again.turn.done() and not second.turn.done()  # still first in line
    queue.leave(again)  # its client left while it had the turn: the next one's
    assert second.turn.done() and not third.turn.done()
    queue.leave(third)  # left before its turn: skipped
    queue.pass_on(second)
    assert third.turn.cancelled() and len(queue) == 0
