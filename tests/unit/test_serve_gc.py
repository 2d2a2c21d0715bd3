"""The service runs with the heap it starts with out of the garbage collector's sight
(full collections then walk only what serving made) and its young generation collected
less often, and leaves both as they were."""

from __future__ import annotations

import gc

from mailman.cli.serve import YOUNG_THRESHOLD, run


def test_the_service_runs_with_its_starting_heap_frozen_and_thaws_it_after() -> None:
    """``run`` serves with what was alive before it frozen, and unfreezes it after."""
    before = gc.get_freeze_count()

    async def main() -> int:
        return gc.get_freeze_count()

    assert run(main()) > before
    assert gc.get_freeze_count() == before


def test_the_service_collects_its_young_generation_at_its_own_threshold() -> None:
    """``run`` serves with the young generation's threshold at ``YOUNG_THRESHOLD`` (the
    older generations' as they were), and puts the thresholds back after."""
    before = gc.get_threshold()
    assert before[0] != YOUNG_THRESHOLD

    seen: list[tuple[int, int, int]] = []

    async def main() -> int:
        seen.append(gc.get_threshold())
        return 0

    assert run(main()) == 0
    assert seen == [(YOUNG_THRESHOLD, *before[1:])]
    assert gc.get_threshold() == before
