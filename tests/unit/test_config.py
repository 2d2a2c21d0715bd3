"""Configuration at the entry point: ``--help``, and bad settings refused as exit 2."""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import re
from pathlib import Path

import pytest
import structlog

import mailman.config as config
from mailman import main
from mailman.config import (
    LOG_LEVELS,
    SETTINGS,
    Config,
    ConfigError,
    check_broker_url,
    check_store_url,
    env_only,
    load,
    parse,
    provider_plugins,
)
from mailman.store import open_store

DEFAULTS = Config()

#: Every flag: (flag, metavar, its real default, its environment twin).
FLAGS = (
    ("--host", "HOST", DEFAULTS.host, "MAILMAN_HOST"),
    ("--port", "PORT", str(DEFAULTS.port), "MAILMAN_PORT"),
    ("--store", "URL", DEFAULTS.store, "MAILMAN_STORE"),
    ("--broker", "URL", DEFAULTS.broker, "MAILMAN_BROKER"),
    ("--role", "ROLES", ",".join(DEFAULTS.roles), "MAILMAN_ROLE"),
    ("--processes", "N", str(DEFAULTS.processes), "MAILMAN_PROCESSES"),
)

BAD_STORES = (
    "foo://x",
    "mysql://",
    "mysql://u:p@h:notaport/db",
    "sqlite:",
    "mysql://host/bad-name!",
    "mysql://h:99999/db",
    "mysql://h/db?charset=latin1",
    "mysql://h/db?pool_min=x",
    "mysql://h/db?pool_max=0",
    "MYSQL://h/db",
    "mailman.db",
)
GOOD_STORES = (
    "sqlite:///mailman.db",
    "sqlite:////var/lib/mailman/mailman.db",
    "sqlite://",
    "mysql://u:p@h:3306/db",
    "mysql://root@localhost/mailman",
    "mysql://m%40il:p%40ss%2Fw%3Ard@db.example:3307/mail_man$1?pool_min=0&pool_max=5",
)
BAD_BROKERS = (
    "rabbit://x",
    "kafka://",
    "kafka://h",
    "kafka://h:nope",
    "kafka://h:0",
    "kafka://h:99999",
    "kafka://h:9092,",
    "kafka://h:9092/topic",
    "kafka://u:pw@h:9092",
    "memory",
)
GOOD_BROKERS = (
    "memory://",
    "kafka://h:9092",
    "kafka://a.example:9092,b.example:9093",
    "kafka://[::1]:9092/",
)
#: Bad URLs that carry a password: the message must not.
SECRET_URLS = (
    ("--store", "mysql://u:s3cret@h:nope/db"),
    ("--store", "mysql://u:s3cret@h/"),
    ("--store", "mysql://u:s3cret@h/bad-name!"),
    ("--store", "mysql://u:s3cret@h/db?pool=1"),
    ("--store", "mysql://u:s3cret@h/db?pool_min=a"),
    ("--store", "foo://u:s3cret@h/db"),
    ("--store", "u:s3cret@h/db"),
    ("--broker", "kafka://u:s3cret@h:9092"),
    ("--broker", "kafka://u:s3cret@h:nope"),
    ("--broker", "amqp://u:s3cret@h"),
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` reads ``os.environ``: keep the caller's Mailman settings out of these tests."""
    for name in (*env_only(), *(var for *_, var in FLAGS)):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "100")


def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    # argparse wraps lines: compare with runs of whitespace made one space.
    return " ".join(capsys.readouterr().out.split())


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The ``detail`` of the one line ``main(argv)`` wrote to stderr, a JSON object
    (``config.invalid``), once it returned 2. The logging set-up is left as it was."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    try:
        assert main(list(argv)) == 2
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(root_level)
        logging.captureWarnings(False)
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    event = json.loads(line)
    assert event["event"] == "config.invalid"
    detail: str = event["detail"]
    return detail


@pytest.mark.parametrize(("flag", "metavar", "default", "var"), FLAGS)
def test_help_shows_each_flag_with_its_real_default_and_env_twin(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
    metavar: str,
    default: str,
    var: str,
) -> None:
    """``--help`` names each flag, its built-in default and its env twin, whatever env holds."""
    monkeypatch.setenv("MAILMAN_STORE", "sqlite:///from-env.db")
    monkeypatch.setenv("MAILMAN_HOST", "0.0.0.0")
    out = help_text(capsys)
    line = re.search(rf"{re.escape(flag)} {metavar} (.*?\(default: (.*?); env (\w+)\))", out)
    assert line is not None, out
    assert (line[2], line[3]) == (default, var)
    assert "from-env.db" not in out
    assert "0.0.0.0" not in out


def test_help_covers_every_flag_the_parser_has(capsys: pytest.CaptureFixture[str]) -> None:
    """Every flag ``--help`` shows says its default and its env twin (new flags too)."""
    out = help_text(capsys)
    shown = set(re.findall(r"\[(--[a-z-]+)[ \]]", out))
    assert {flag for flag, *_ in FLAGS} <= shown
    # --version is the command line's own, no setting (test_cli.py tests it).
    for flag in shown - {"--version"}:
        # A value flag shows its metavar; an on/off flag (--reuse-port) has none.
        described = rf"{flag}(?: [A-Z_]+)? [^()]*\(default: [^;]*; env MAILMAN_[A-Z_]+\)"
        assert re.search(described, out), flag


def test_help_epilog_names_env_only_settings_and_points_to_the_docs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The epilog says settings without a flag are env variables, names them, and cites the
    configuration page of the docs."""
    out = help_text(capsys)
    epilog = out[out.index("Settings without a flag") :]
    assert "docs/configuration.md" in epilog
    for name in env_only():
        assert re.search(rf"\b{name}\b", epilog), name


def test_env_only_lists_every_variable_config_reads() -> None:
    """``env_only()`` plus the flags' twins are exactly the env variables ``config`` and the
    providers (each declaring its own) read."""
    packages = (Path(config.__file__).parent, Path(config.__file__).parent.parent / "providers")
    source = "".join(path.read_text() for package in packages for path in package.glob("*.py"))
    prefixes = "MAILMAN|SENDGRID|MAILGUN|RESEND|SES|POSTMARK|SMTP_RELAY|PROMETHEUS"
    read = set(re.findall(rf"\"((?:{prefixes})_[A-Z_]+)\"", source))
    on_off = {"MAILMAN_REUSE_PORT"}  # --reuse-port: a flag without a value
    assert read == set(env_only()) | {var for *_, var in FLAGS} | on_off
    assert len(set(env_only())) == len(env_only())


def test_a_flag_beats_its_env_twin_and_the_env_beats_the_default() -> None:
    """Flag over environment over built-in default."""
    assert load([], {}).store == DEFAULTS.store
    env = {"MAILMAN_STORE": "sqlite:///env.db", "MAILMAN_BROKER": "kafka://k:9092"}
    assert load([], env).store == "sqlite:///env.db"
    flagged = load(["--store", "sqlite:///flag.db", "--broker", "memory://"], env)
    assert (flagged.store, flagged.broker) == ("sqlite:///flag.db", "memory://")


@pytest.mark.parametrize("url", BAD_STORES)
def test_a_bad_store_url_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """A store URL Mailman cannot open is refused at load: one JSON line, exit 2."""
    err = refusal(capsys, "--store", url)
    assert err.startswith("--store (MAILMAN_STORE): ")
    assert "Traceback" not in err


def test_a_bad_store_url_from_the_environment_is_refused_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MAILMAN_STORE`` is checked like ``--store``."""
    monkeypatch.setenv("MAILMAN_STORE", "mysql://h/")
    assert "names no database" in refusal(capsys)


@pytest.mark.parametrize("url", GOOD_STORES)
def test_good_store_urls_are_accepted(url: str) -> None:
    """Every documented store URL form loads."""
    assert load(["--store", url], {}).store == url


@pytest.mark.parametrize("url", BAD_STORES + GOOD_STORES)
def test_the_store_check_agrees_with_open_store(url: str) -> None:
    """``check_store_url`` refuses exactly the URLs ``open_store`` refuses."""
    try:
        open_store(url)
    except ValueError:
        opens = False
    else:
        opens = True
    try:
        check_store_url(url)
    except ConfigError:
        checks = False
    else:
        checks = True
    assert checks == opens


@pytest.mark.parametrize("url", BAD_BROKERS)
def test_a_bad_broker_url_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """A broker URL other than ``memory://`` or ``kafka://host:port[,...]`` is exit 2."""
    err = refusal(capsys, "--broker", url)
    assert err.startswith("--broker (MAILMAN_BROKER): ")


@pytest.mark.parametrize("url", GOOD_BROKERS)
def test_good_broker_urls_are_accepted(url: str) -> None:
    """``memory://`` and kafka address lists load."""
    check_broker_url(url)
    assert load(["--broker", url], {}).broker == url


def test_an_unknown_broker_scheme_is_named_as_such() -> None:
    """The refusal of a foreign broker says "unsupported broker" and names the scheme."""
    with pytest.raises(ConfigError, match="unsupported broker 'rabbit'"):
        load(["--broker", "rabbit://x"], {})


@pytest.mark.parametrize(("flag", "url"), SECRET_URLS)
def test_a_password_never_appears_in_a_url_refusal(
    capsys: pytest.CaptureFixture[str], flag: str, url: str
) -> None:
    """Refusing a URL that carries a password never prints the password."""
    err = refusal(capsys, flag, url)
    assert err
    assert "s3cret" not in err


def test_an_unknown_log_level_is_refused_with_the_accepted_ones(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MAILMAN_LOG_LEVEL=loud`` is exit 2, and the message lists every accepted level."""
    monkeypatch.setenv("MAILMAN_LOG_LEVEL", "loud")
    err = refusal(capsys)
    assert err.startswith("MAILMAN_LOG_LEVEL must be one of ")
    assert "'loud'" in err
    for level in ("debug", "info", "warning", "error", "critical"):
        assert level in err


@pytest.mark.parametrize("level", [*LOG_LEVELS, "WARNING", "Debug"])
def test_known_log_levels_load_in_lower_case(level: str) -> None:
    """Every accepted level loads, in any case."""
    assert load([], {"MAILMAN_LOG_LEVEL": level}).log_level == level.lower()


@pytest.mark.parametrize("raw", ["inf", "nan"])
def test_a_count_that_is_not_finite_is_refused(raw: str) -> None:
    """A whole-number setting given inf or nan is refused by name, not a traceback."""
    with pytest.raises(
        ConfigError, match=rf"^MAILMAN_RELAY_BATCH must be a whole number, got '{raw}'"
    ):
        load([], {"MAILMAN_RELAY_BATCH": raw})


def test_each_setting_fills_its_config_attribute_with_its_default() -> None:
    """A declared setting's path is a ``Config`` attribute whose value is the declared default
    (provider settings: the fields of ``Config.providers``' entries)."""
    for s in SETTINGS.values():
        if s.owner:
            name = s.path.split(".", 1)[0]
            kind = provider_plugins().usable[name].settings
            assert s.path.split(".", 1)[1] in {f.name for f in dataclasses.fields(kind)}, s.path
        else:
            assert operator.attrgetter(s.path)(DEFAULTS) == s.default, s.path


def test_the_environment_fills_the_declared_attribute() -> None:
    """Each whole-number or number setting's variable lands in its own attribute."""
    for s in SETTINGS.values():
        durations = (parse.duration, parse.duration_or_off)  # "7" has no unit: refused
        if (
            s.env is not None
            and type(s.default) in (int, float)
            and not s.flag
            and not s.owner  # a provider's: read by load's chain (its provider's tests)
            and s.parse not in durations
        ):
            value = operator.attrgetter(s.path)(load([], {s.env: "7"}))
            assert value == 7, s.path


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("90s", 90.0), ("15m", 900.0), ("12h", 43200.0), ("30d", 2592000.0), (" 1.5H ", 5400.0)],
)
def test_a_duration_reads_with_its_unit(raw: str, seconds: float) -> None:
    """A retention written 90s, 15m, 12h or 30d (any case, blanks around) is seconds."""
    assert load([], {"MAILMAN_BODY_RETENTION": raw}).body_retention == seconds


def test_retention_defaults_are_30_and_400_days_and_off_turns_one_off() -> None:
    """Bodies go after 30 days and records after 400 by default; ``off`` keeps them."""
    assert DEFAULTS.body_retention == 30 * 86400 and DEFAULTS.record_retention == 400 * 86400
    assert SETTINGS["body_retention"].shown == "30d"
    off = load([], {"MAILMAN_BODY_RETENTION": "off", "MAILMAN_RECORD_RETENTION": "OFF"})
    assert off.body_retention is None and off.record_retention is None


@pytest.mark.parametrize("raw", ["30", "30y", "d", "-1d", "0s", "nanh", "infd", "soon"])
def test_a_bad_duration_is_refused_naming_the_setting(raw: str) -> None:
    """A duration without a unit, with an unknown one, zero or negative is refused by name."""
    with pytest.raises(ConfigError, match=r"^MAILMAN_RECORD_RETENTION must be a duration"):
        load([], {"MAILMAN_RECORD_RETENTION": raw})


def test_the_retention_interval_cannot_be_off() -> None:
    """``off`` is no interval: the purger's interval is refused by name."""
    with pytest.raises(ConfigError, match=r"^MAILMAN_RETENTION_INTERVAL must be a duration"):
        load([], {"MAILMAN_RETENTION_INTERVAL": "off"})
    assert parse.DURATION_UNITS["m"] == 60


def test_provider_weights_load_in_chain_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sendgrid:3,mailgun:1,outbox`` loads the chain as given with its weights; a skipped
    provider (no key) takes its weight with it."""
    monkeypatch.setenv("MAILMAN_PROVIDERS", "sendgrid:3,mailgun:1,outbox")
    monkeypatch.setenv("SENDGRID_API_KEY", "k")
    loaded = config.load([], dict(__import__("os").environ))
    assert loaded.chain == ("sendgrid", "outbox")
    assert loaded.weights == (3, 0)
    assert loaded.skipped_providers == ("mailgun",)


@pytest.mark.parametrize("chain", ["sendgrid:0,outbox", "sendgrid:three", "outbox:2.5"])
def test_a_bad_provider_weight_is_refused_naming_the_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, chain: str
) -> None:
    """A weight that is not a whole number >= 1: one JSON line naming MAILMAN_PROVIDERS,
    exit 2."""
    monkeypatch.setenv("MAILMAN_PROVIDERS", chain)
    err = refusal(capsys, "--store", "sqlite:///:memory:")
    assert "MAILMAN_PROVIDERS" in err and "at least 1" in err
    assert "Traceback" not in err


def test_a_provider_of_the_chain_can_have_its_own_sender_concurrency() -> None:
    """MAILMAN_SENDER_CONCURRENCY_PER_PROVIDER sets the named senders; the rest keep the default."""
    env = {
        "MAILMAN_PROVIDERS": "sendgrid,resend",
        "SENDGRID_API_KEY": "SG.k",
        "RESEND_API_KEY": "re_k",
        "MAILMAN_SENDER_CONCURRENCY": "200",
        "MAILMAN_SENDER_CONCURRENCY_PER_PROVIDER": "Resend:2",
    }
    loaded = load([], env)
    assert (loaded.concurrency_of("resend"), loaded.concurrency_of("sendgrid")) == (2, 200)
    assert load([], {}).concurrency_of("outbox") == 256


def test_a_provider_of_the_chain_can_have_a_rate_per_second() -> None:
    """MAILMAN_SENDER_RATE_PER_PROVIDER paces the named senders; the rest have no pace."""
    env = {
        "MAILMAN_PROVIDERS": "sendgrid,resend",
        "SENDGRID_API_KEY": "SG.k",
        "RESEND_API_KEY": "re_k",
        "MAILMAN_SENDER_RATE_PER_PROVIDER": "Resend:2",
    }
    loaded = load([], env)
    assert (loaded.rate_of("resend"), loaded.rate_of("sendgrid")) == (2, None)
    assert load([], {}).rate_of("outbox") is None


@pytest.mark.parametrize("variable", ["CONCURRENCY_PER_PROVIDER", "RATE_PER_PROVIDER"])
@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("resend", "give resend a number"),
        ("resend:0", "the number of resend must be a whole number of at least 1"),
        ("resend:2,resend:3", "resend is named twice"),
        ("mailgun:4", "names mailgun, not in the chain"),
    ],
)
def test_a_bad_per_provider_number_is_refused_by_name(variable: str, raw: str, says: str) -> None:
    """A part without a number, a number below 1, a name twice or off the chain is refused,
    for the concurrency and the rate alike."""
    name = f"MAILMAN_SENDER_{variable}"
    env = {"MAILMAN_PROVIDERS": "resend", "RESEND_API_KEY": "re_k", name: raw}
    with pytest.raises(ConfigError, match=rf"^{name}.*{says}"):
        load([], env)
