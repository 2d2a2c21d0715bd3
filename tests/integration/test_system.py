"""The whole system in one test process: HTTP in, fake providers out, failover and retries."""

from __future__ import annotations

import email.parser
import email.policy
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from mailman.actors.supervisor import RestartBudgetExceeded
from mailman.core.messages import Dispatch, decode
from mailman.core.model import Mail
from mailman.providers import Accepted, ProviderClient, Result
from mailman.system import Mailman, embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid

#: The original service's example request, byte for byte.
EXAMPLE = (
    b'{"to": ["ann@example.com"], "from": "Mailman <noreply@example.com>", '
    b'"subject": "Welcome", "content": "Hello Ann, welcome aboard!"}'
)


class Api:
    """A small client of Mailman's HTTP API for the tests."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def send(self, **fields: Any) -> str:
        body = {"to": ["ann@example.com"], "from": "noreply@example.com", "content": "Hi"}
        body.update(fields)
        async with self.http.post(f"{self.url}/mail/send", json=body) as resp:
            assert resp.status == 201, await resp.text()
            mail_id: str = (await resp.json())["mail"]["id"]
            return mail_id

    async def status(self, mail_id: str) -> str:
        async with self.http.get(f"{self.url}/mail/{mail_id}/status") as resp:
            assert resp.status == 200
            status: str = (await resp.json())["mail"]["status"]
            return status

    async def show(self, mail_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/mail/{mail_id}") as resp:
            assert resp.status == 200
            mail: dict[str, Any] = (await resp.json())["mail"]
            return mail

    async def wait_status(self, mail_id: str, status: str, within: float = 10.0) -> None:
        async def reached() -> bool:
            return await self.status(mail_id) == status

        await eventually(reached, within=within, what=f"{mail_id} {status}")


async def test_original_example_is_accepted_and_sent(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """The original example request gets 201 with links, reaches SendGrid intact and ends sent."""
    config = make_config(tmp_path, provider_env(sendgrid, mailgun))
    async with embedded(config) as mailman:
        async with http.post(
            f"{mailman.url}/mail/send",
            data=EXAMPLE,
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 201
            body = await resp.json()
            mail_id = body["mail"]["id"]
            assert resp.headers["Location"] == f"/mail/{mail_id}"
        assert body == {
            "mail": {
                "id": mail_id,
                "status": "queued",
                "links": [{"status": f"/mail/{mail_id}/status", "self": f"/mail/{mail_id}"}],
            }
        }
        api = Api(http, mailman.url)
        await api.wait_status(mail_id, "sent")
        shown = await api.show(mail_id)
    assert shown["provider"] == "sendgrid"
    assert shown["provider_message_id"] == sendgrid.message_ids[0]
    assert [a["outcome"] for a in shown["attempts"]] == ["accepted"]
    (got,) = sendgrid.received
    assert got["personalizations"][0]["to"] == [{"email": "ann@example.com"}]
    assert got["from"] == {"email": "noreply@example.com", "name": "Mailman"}
    assert got["subject"] == "Welcome"
    assert got["content"] == [{"type": "text/plain", "value": "Hello Ann, welcome aboard!"}]
    assert got["custom_args"] == {"mail_id": mail_id}
    assert mailgun.calls == 0


@pytest.mark.parametrize("mode", ["503", "timeout"])
async def test_fails_over_to_mailgun(
    mode: str,
    tmp_path: Path,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """When SendGrid answers 503 or not at all, the mail goes out through Mailgun."""
    sendgrid.mode = mode  # type: ignore[assignment]
    env = provider_env(sendgrid, mailgun, MAILMAN_PROVIDER_TIMEOUT="0.3")
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send(subject="Failover")
        await api.wait_status(mail_id, "sent")
        shown = await api.show(mail_id)
    assert shown["provider"] == "mailgun"
    # A 503 is a plain failure; no answer at all is ``unknown`` (SendGrid may have
    # taken it), and SendGrid offers no way to ask, so Mailgun sends it.
    first = ("transient", None) if mode == "503" else ("unknown", "cannot-check")
    assert [(a["provider"], a["outcome"], a["checked"]) for a in shown["attempts"]] == [
        ("sendgrid", *first),
        ("mailgun", "accepted", None),
    ]
    assert mailgun.mail_ids() == [mail_id]
    assert sendgrid.calls == 1 and sendgrid.received == []


@pytest.mark.slow
async def test_open_breaker_skips_sendgrid_then_closes_after_trial(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """After N failures no call reaches SendGrid; once it is back, a half-open trial closes it."""
    sendgrid.mode = "503"
    env = provider_env(
        sendgrid, mailgun, MAILMAN_BREAKER_FAIL_MAX="2", MAILMAN_BREAKER_RESET_SECONDS="3"
    )
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        for _ in range(2):
            await api.wait_status(await api.send(), "sent")
        breaker = mailman.breakers["sendgrid"]
        assert breaker.current_state.name == "OPEN"
        assert sendgrid.calls == 2

        skipped = await api.send()
        await api.wait_status(skipped, "sent")
        assert sendgrid.calls == 2  # the open breaker kept the call away
        shown = await api.show(skipped)
        assert [(a["provider"], a["outcome"]) for a in shown["attempts"]] == [
            ("sendgrid", "skipped"),
            ("mailgun", "accepted"),
        ]

        sendgrid.mode = "up"
        sent_by: list[str] = []

        async def through_sendgrid() -> bool:
            mail_id = await api.send()
            await api.wait_status(mail_id, "sent")
            sent_by.append((await api.show(mail_id))["provider"])
            return sent_by[-1] == "sendgrid"

        await eventually(through_sendgrid, within=15, interval=0.2, what="a half-open trial")
        assert breaker.current_state.name == "CLOSED"
        after = await api.send()
        await api.wait_status(after, "sent")
        assert (await api.show(after))["provider"] == "sendgrid"


async def test_all_down_then_back_every_mail_sent_once(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """With both providers down for a while, every mail is sent once they are back, none twice."""
    sendgrid.mode = mailgun.mode = "503"
    env = provider_env(sendgrid, mailgun, MAILMAN_BREAKER_RESET_SECONDS="0.3")
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        ids = [await api.send(subject=f"mail {n}") for n in range(20)]

        async def retried() -> bool:
            rounds = [
                max((a["round"] for a in (await api.show(i))["attempts"]), default=0) for i in ids
            ]
            return min(rounds) >= 2

        await eventually(retried, within=15, what="two retry rounds for every mail")
        assert sendgrid.received == [] and mailgun.received == []
        assert {await api.status(i) for i in ids} == {"sending"}
        sendgrid.mode = mailgun.mode = "up"
        for mail_id in ids:
            await api.wait_status(mail_id, "sent", within=15)
    delivered = sendgrid.mail_ids() + mailgun.mail_ids()
    assert sorted(delivered) == sorted(ids)  # each exactly once


async def test_both_reject_permanently_fails_with_both_reasons(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """A mail every provider rejects ends failed, each provider's reason kept, without retries."""
    sendgrid.mode = mailgun.mode = "400"
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send()
        await api.wait_status(mail_id, "failed")
        shown = await api.show(mail_id)
    attempts = [(a["provider"], a["outcome"]) for a in shown["attempts"]]
    assert attempts == [("sendgrid", "rejected"), ("mailgun", "rejected")]
    assert all(a["reason"] for a in shown["attempts"])
    assert shown["reason"] == "every provider rejected the mail"
    assert sendgrid.calls == 1 and mailgun.calls == 1


async def test_misconfigured_key_fails_over_and_is_never_shown(
    tmp_path: Path,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A wrong SendGrid key fails over to Mailgun; no key appears in the mail's record or logs."""
    env = provider_env(sendgrid, mailgun, SENDGRID_API_KEY="SG.wrong-key-do-not-print")
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send()
        await api.wait_status(mail_id, "sent")
        shown = await api.show(mail_id)
    assert [(a["provider"], a["outcome"]) for a in shown["attempts"]] == [
        ("sendgrid", "misconfigured"),
        ("mailgun", "accepted"),
    ]
    everything = str(shown) + "".join(capsys.readouterr())
    for secret in ("SG.wrong-key-do-not-print", mailgun.api_key):
        assert secret not in everything


async def test_bad_input_is_refused_and_nothing_stored(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Bad requests through the running system get 4xx problems and leave no mail behind."""
    async with embedded(make_config(tmp_path)) as mailman:
        cases: list[tuple[dict[str, Any], int]] = [
            ({"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 415),
            ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
            ({"json": {"to": "not-an-address", "from": "a@example.com", "content": "x"}}, 422),
        ]
        for kwargs, status in cases:
            async with http.post(f"{mailman.url}/mail/send", **kwargs) as resp:
                assert resp.status == status
                assert resp.content_type == "application/problem+json"
                assert (await resp.json())["status"] == status
        assert await mailman.store.unfinished() == []


async def test_fresh_machine_default_writes_eml_files(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With no provider key at all, mails are written as RFC 5322 .eml files to the outbox."""
    config = make_config(tmp_path, {"MAILMAN_PROVIDERS": "sendgrid,mailgun"})
    assert config.chain == ("outbox",)
    async with embedded(config) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send(to="Bob <bob@example.com>", subject="Local", html="<p>Hi</p>")
        await api.wait_status(mail_id, "sent")
    path = tmp_path / "outbox" / f"{mail_id}.eml"
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
    assert message["To"] == "Bob <bob@example.com>"
    assert message["Subject"] == "Local"
    body = message.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Hi"


class Crash(BaseException):
    """What no handler catches: it ends the actor (as a bug outside any record would)."""


class Flaky(ProviderClient):
    """A provider client that raises ``error`` (instead of returning a result) ``crashes`` times."""

    name = "outbox"

    def __init__(self, crashes: int, error: type[BaseException] = Crash) -> None:
        self.crashes = crashes
        self.error = error
        self.sent: list[str] = []

    async def send(self, mail: Mail) -> Result:
        if self.crashes > 0:
            self.crashes -= 1
            raise self.error("bug in a provider client")
        self.sent.append(mail.id)
        return Accepted(message_id=f"<{mail.id}@flaky>")


async def test_crashing_sender_is_restarted_and_its_mail_still_sent(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A sender that crashes is restarted by the supervisor; the mail it held is delivered again."""
    flaky = Flaky(crashes=1)
    config = make_config(tmp_path, {"MAILMAN_RESTART_BACKOFF_SECONDS": "0.01"})
    async with embedded(config, clients={"outbox": flaky}) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send()
        await api.wait_status(mail_id, "sent")
        assert mailman.supervisor is not None
        assert mailman.supervisor.restarts["sender:outbox"] == 1
    assert flaky.sent == [mail_id]


async def test_a_handler_that_keeps_raising_dead_letters_the_mail(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A record whose handler raises MAILMAN_POISON_ATTEMPTS times is dead-lettered: the mail
    ends failed with the reason, the dead letter keeps the record, and nothing restarts."""
    flaky = Flaky(crashes=1000, error=RuntimeError)
    config = make_config(tmp_path, {"MAILMAN_POISON_ATTEMPTS": "3"})
    async with embedded(config, clients={"outbox": flaky}) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send()
        await api.wait_status(mail_id, "failed")
        shown = await api.show(mail_id)
        letters = await mailman.store.dead_letters()
        assert mailman.supervisor is not None
        assert mailman.supervisor.restarts["sender:outbox"] == 0
    assert "dead letter" in shown["reason"] and "RuntimeError" in shown["reason"]
    assert [(x.mailbox, x.mail_id) for x in letters] == [("send.outbox", mail_id)]
    assert decode(Dispatch, letters[0].payload).mail_id == mail_id
    # Each try was recorded before the call, and left unknown since the client raised.
    assert [a["outcome"] for a in shown["attempts"]] == ["unknown"] * 3
    assert flaky.crashes == 1000 - 3


@pytest.mark.slow
async def test_supervisor_gives_up_past_budget(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """A sender that keeps crashing spends the restart budget; the system stops with an error."""
    config = make_config(
        tmp_path, {"MAILMAN_RESTART_BACKOFF_SECONDS": "0.01", "MAILMAN_MAX_RESTARTS": "2"}
    )
    with pytest.raises(RestartBudgetExceeded):
        async with embedded(config, clients={"outbox": Flaky(crashes=1000)}) as mailman:
            await Api(http, mailman.url).send()
            await eventually(mailman.stopped.is_set, what="the system to stop by itself")
    # Checked after the block: leaving it raises RestartBudgetExceeded, which would
    # replace a failed assert inside it and let pytest.raises swallow the failure.
    assert mailman.stopped.is_set()
    assert mailman.supervisor is not None
    assert mailman.supervisor.restarts["sender:outbox"] == 3


def test_mailman_splits_api_and_the_rest_on_one_sqlite_file(tmp_path: Path) -> None:
    """With in-process mailboxes the roles split only into api and the rest, on a shared file."""
    from mailman.config import ConfigError

    api = Mailman(make_config(tmp_path, None, "--role", "api"))
    assert api.roles == {"api"}
    assert api.nudge.remote is not None  # wakes the other process's relay
    assert api.load.report == api.nudge.remote.busy  # and tells it while saturated
    rest = "outbox,relay,retry,sweeper"
    worker = Mailman(make_config(tmp_path, None, "--role", rest))
    assert worker.roles == set(rest.split(","))
    assert worker.nudge.remote is None
    assert worker.load.report is None
    with pytest.raises(ConfigError, match="split only into api and the rest"):
        Mailman(make_config(tmp_path, None, "--role", "api,relay"))
    # The same split on MySQL wakes the relay the same way; with Kafka it looks every interval.
    mysql = ("--store", "mysql://root@127.0.0.1:3306/mailman")
    assert Mailman(make_config(tmp_path, None, "--role", "api", *mysql)).nudge.remote is not None
    kafka = ("--broker", "kafka://127.0.0.1:9092")
    assert (
        Mailman(make_config(tmp_path, None, "--role", "api", *mysql, *kafka)).nudge.remote is None
    )


def test_the_old_role_name_bookkeeper_runs_the_sweeper(tmp_path: Path) -> None:
    """``--role bookkeeper``, the sweeper's role before it was named after what it runs,
    still runs it, and the start says so once."""
    worker = Mailman(make_config(tmp_path, None, "--role", "bookkeeper,outbox,relay,retry"))
    assert worker.roles == {"sweeper", "outbox", "relay", "retry"}
    with capture_logs() as logs:
        worker._announce()
    renamed = [line for line in logs if line["event"] == "role.renamed"]
    assert renamed == [
        {"event": "role.renamed", "log_level": "warning", "role": "bookkeeper", "now": "sweeper"}
    ]


def test_mailman_refuses_a_split_deployment_on_an_in_memory_store(tmp_path: Path) -> None:
    """Running only some actors on an in-memory database (one process's own) is refused."""
    from mailman.config import ConfigError

    argv = ("--role", "api", "--broker", "kafka://127.0.0.1:9092", "--store", "sqlite://")
    with pytest.raises(ConfigError, match="store the processes share"):
        Mailman(make_config(tmp_path, None, *argv))


def test_mailman_refuses_unknown_roles_and_brokers(tmp_path: Path) -> None:
    """Unknown roles and broker schemes are refused at start with a message naming them."""
    from mailman.config import ConfigError

    with pytest.raises(ConfigError, match="unknown role"):
        Mailman(make_config(tmp_path, None, "--role", "api,sendgird"))
    with pytest.raises(ConfigError, match="unsupported broker"):
        Mailman(make_config(tmp_path, None, "--broker", "rabbit://x"))


async def test_a_failed_mail_sent_again_goes_out_in_a_new_round(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """POST /mail/{id}/retry sends a failed mail again, same id, a new round; 409 unless failed."""
    sendgrid.mode = mailgun.mode = "400"  # both reject it: failed
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send(subject="Again")
        await api.wait_status(mail_id, "failed")
        sendgrid.mode = mailgun.mode = "up"
        async with http.post(f"{mailman.url}/mail/{mail_id}/retry") as resp:
            assert resp.status == 202, await resp.text()
            assert (await resp.json())["mail"]["status"] == "queued"
        await api.wait_status(mail_id, "sent")
        shown = await api.show(mail_id)
        async with http.post(f"{mailman.url}/mail/{mail_id}/retry") as resp:
            assert resp.status == 409
            assert (await resp.json())["type"].endswith("/status-conflict")
        async with http.post(f"{mailman.url}/mail/unknown-id/retry") as resp:
            assert resp.status == 404
    assert [(a["provider"], a["round"], a["outcome"]) for a in shown["attempts"]] == [
        ("sendgrid", 0, "rejected"),
        ("mailgun", 0, "rejected"),
        ("sendgrid", 1, "accepted"),
    ]
    assert sendgrid.mail_ids() == [mail_id]


@pytest.mark.parametrize("retry_after", ["inf", "1e400", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_an_endless_retry_after_delays_the_mail_and_never_fails_it(
    retry_after: str,
    tmp_path: Path,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """Both providers answering 429 with a Retry-After of forever: the mail waits the backoff
    cap, is tried again, and is sent once a provider recovers (it was failed at once)."""
    sendgrid.mode = mailgun.mode = "429"
    sendgrid.retry_after = mailgun.retry_after = retry_after
    env = provider_env(sendgrid, mailgun, MAILMAN_BREAKER_FAIL_MAX="1000")
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send()

        async def second_round() -> bool:
            return mailgun.calls >= 2

        await eventually(second_round, what="a second round after Retry-After")
        assert await api.status(mail_id) == "sending"
        mailgun.mode = "up"
        await api.wait_status(mail_id, "sent")
    assert mailgun.mail_ids() == [mail_id]
