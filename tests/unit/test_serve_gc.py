"""The service runs with the garbage collector's young generation raised (fewer mails in
flight promoted to the old generations), and leaves the thresholds as they were."""

from __future__ import annotations

import gc

from mailman.cli.serve import GC_YOUNG_THRESHOLD, run


def test_the_service_runs_with_the_young_generation_raised_and_restores_it() -> None:
    """``run`` serves with ``GC_YOUNG_THRESHOLD`` and puts the thresholds back after."""
    before = gc.get_threshold()

    async def main() -> int:
        return gc.get_threshold()[0]

    assert before[0] != GC_YOUNG_THRESHOLD
    assert run(main()) == GC_YOUNG_THRESHOLD
    assert gc.get_threshold() == before
