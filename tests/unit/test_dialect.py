"""The statements' shapes by dialect: IN lists and multi-row inserts."""

from __future__ import annotations

from mailman.store.dialect import CHUNK, MYSQL, SQLITE, in_lists, padded
from mailman.store.operation import Statement, inserts


def test_sqlite_in_lists_are_padded_to_a_power_of_two_with_the_last_item() -> None:
    """On SQLite 5 ids become 8, the last repeated; 4 stay 4; none stay none."""
    assert padded(SQLITE, ["a", "b", "c", "d", "e"]) == ["a", "b", "c", "d", "e", "e", "e", "e"]
    assert padded(SQLITE, ["a", "b", "c", "d"]) == ["a", "b", "c", "d"]
    assert list(padded(SQLITE, [])) == []


def test_mysql_in_lists_are_left_as_they_are() -> None:
    """MySQL's driver prepares nothing: its IN lists keep their count."""
    assert padded(MYSQL, [1, 2, 3]) == [1, 2, 3]


def test_in_lists_split_at_the_chunk_size_then_pad() -> None:
    """Ids past CHUNK go in more lists, every one a power of two long on SQLite."""
    ids = list(range(CHUNK + 3))
    lists = list(in_lists(SQLITE, ids))
    assert [len(x) for x in lists] == [512, 4]
    assert sorted(set(lists[0]) | set(lists[1])) == ids


def test_sqlite_inserts_run_the_one_row_statement_for_each_row() -> None:
    """SQLite: one executemany of the one-row INSERT, whatever the count."""
    rows = [(n, n * 10) for n in range(7)]
    made = list(inserts(SQLITE, lambda n: f"INSERT {n}", rows))
    assert made == [Statement("INSERT 1", rows, many=True)]
    assert list(inserts(SQLITE, lambda n: f"INSERT {n}", [])) == []


def test_mysql_inserts_are_multi_row_by_chunk() -> None:
    """MySQL: one multi-row INSERT per CHUNK rows, their values flat."""
    rows = [(n, n * 10) for n in range(CHUNK + 2)]
    made = list(inserts(MYSQL, lambda n: f"INSERT {n}", rows))
    assert [s.sql for s in made] == [f"INSERT {CHUNK}", "INSERT 2"]
    assert not any(s.many for s in made)
    assert list(made[1].params) == [CHUNK, CHUNK * 10, CHUNK + 1, (CHUNK + 1) * 10]
