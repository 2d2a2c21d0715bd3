"""The service runs with the heap it starts with out of the garbage collector's sight
(full collections then walk only what serving made), and leaves it as it was."""

from __future__ import annotations

import gc

from mailman.cli.serve import run


def test_the_service_runs_with_its_starting_heap_frozen_and_thaws_it_after() -> None:
    """``run`` serves with what was alive before it frozen, and unfreezes it after."""
    before = gc.get_freeze_count()

    async def main() -> int:
        return gc.get_freeze_count()

    assert run(main()) > before
    assert gc.get_freeze_count() == before
