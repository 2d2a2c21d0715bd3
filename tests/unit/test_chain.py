"""Weighted provider chains: which provider a mail tries first, and its failover order."""

from __future__ import annotations

from collections import Counter

import pytest

from mailman.config import provider_plugins
from mailman.config.parse import weighted_names
from mailman.core.chain import Chain

WEIGHTED = Chain(("sendgrid", "mailgun", "ses"), (3, 1, 0))


def test_first_attempts_split_by_weight_over_many_mails() -> None:
    """Over 20,000 mail ids the weighted providers take first attempts close to 3:1; the
    unweighted one none."""
    firsts = Counter(WEIGHTED.first(f"mail-{n}") for n in range(20_000))
    assert set(firsts) == {"sendgrid", "mailgun"}
    assert firsts["sendgrid"] / firsts["mailgun"] == pytest.approx(3.0, rel=0.05)


def test_a_mail_keeps_its_first_provider_every_time() -> None:
    """The choice is a function of the mail id: a retried or redelivered mail, or another
    process, gets the same order (a hash of the id, not Python's per-process hash)."""
    ids = [f"01J{n:08d}" for n in range(200)]
    again = Chain(("sendgrid", "mailgun", "ses"), (3, 1, 0))
    assert [WEIGHTED.order(i) for i in ids] == [again.order(i) for i in ids]
    # Pinned: a change of hash would move mails in flight between providers.
    assert WEIGHTED.order("m-5") == ("mailgun", "sendgrid", "ses")
    assert WEIGHTED.order("m-1") == ("sendgrid", "mailgun", "ses")


def test_failover_order_is_the_other_weighted_ones_then_the_rest() -> None:
    """After the first choice: the other weighted providers in the order given, then the
    unweighted ones in the order given."""
    chain = Chain(("ses", "sendgrid", "postmark", "mailgun", "outbox"), (0, 2, 0, 1, 0))
    orders = {chain.order(f"m{n}") for n in range(100)}
    assert orders == {
        ("sendgrid", "mailgun", "ses", "postmark", "outbox"),
        ("mailgun", "sendgrid", "ses", "postmark", "outbox"),
    }


def test_without_weights_the_order_is_the_chain_as_given() -> None:
    """No weight anywhere: every mail tries the providers in the order given."""
    chain = Chain(("mailgun", "sendgrid"))
    assert {chain.order(f"m{n}") for n in range(50)} == {("mailgun", "sendgrid")}


def test_keep_drops_providers_not_named_and_keeps_weights() -> None:
    """A chain cut to some providers keeps their weights and order."""
    assert WEIGHTED.keep(frozenset({"ses", "mailgun"})) == Chain(("mailgun", "ses"), (1, 0))
    assert WEIGHTED.text() == "sendgrid:3,mailgun:1,ses"


def test_weighted_names_reads_name_weight_pairs() -> None:
    """``name:weight`` pairs, names lower-cased, blanks ignored, no weight is 0."""
    assert weighted_names(" SendGrid:3, mailgun : 1 ,ses,") == (
        ("sendgrid", 3),
        ("mailgun", 1),
        ("ses", 0),
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("sendgrid:0", "at least 1"),
        ("sendgrid:-1", "at least 1"),
        ("sendgrid:1.5", "at least 1"),
        ("sendgrid:x", "at least 1"),
        ("sendgrid:", "at least 1"),
        (":3", "no provider name"),
        ("sendgrid:1,sendgrid:2", "named twice"),
    ],
)
def test_weighted_names_refuses_bad_weights_saying_why(text: str, says: str) -> None:
    """A weight that is not a whole number >= 1, a part without a name, or a name twice."""
    with pytest.raises(ValueError, match=says):
        weighted_names(text)


def test_every_known_provider_name_fits_the_failover_figure() -> None:
    """mailman_failovers_total keeps ``to`` in the figures' sublabel, VARCHAR(16) on MySQL
    (``from`` in the label, 64): a longer provider name would fail the sender's record."""
    assert all(len(name) <= 16 for name in provider_plugins().names)
