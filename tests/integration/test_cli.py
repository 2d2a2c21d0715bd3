"""The one command line: ``mailman [serve]|keys|dead-letters|erase``, ``--version``, ``--help``."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import structlog

from mailman import main
from mailman.config import Config

from ..conftest import sqlite_store

#: Every level of the command line.
LEVELS = (
    (),
    ("serve",),
    ("keys",),
    ("keys", "create"),
    ("keys", "list"),
    ("keys", "revoke"),
    ("tenants",),
    ("tenants", "set"),
    ("tenants", "list"),
    ("dead-letters",),
    ("dead-letters", "list"),
    ("dead-letters", "replay"),
    ("erase",),
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` reads ``os.environ`` unless given an env: keep the caller's settings out."""
    for name in ("MAILMAN_STORE", "MAILMAN_BROKER", "MAILMAN_KAFKA_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "100")


def exits(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int | str | None, str, str]:
    """``main(argv)`` that exits (argparse): its code, stdout and stderr, each with runs of
    whitespace made one space."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, " ".join(captured.out.split()), " ".join(captured.err.split())


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``mailman --version`` prints 'mailman X.Y.Z', the installed package's version, exit 0."""
    assert exits(capsys, "--version") == (0, f"mailman {version('mailman')}", "")


def test_version_from_python_m_mailman() -> None:
    """``python -m mailman --version`` answers the same, on stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "mailman", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"mailman {version('mailman')}\n", "")


@pytest.mark.parametrize("level", LEVELS, ids=" ".join)
def test_help_works_at_every_level(capsys: pytest.CaptureFixture[str], level: tuple[str]) -> None:
    """``--help`` after any command or subcommand shows that level's usage and exits 0."""
    code, out, _ = exits(capsys, *level, "--help")
    assert code == 0
    assert out.startswith(" ".join(("usage: mailman", *level)) + " ")


def test_the_top_level_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``mailman --help`` lists serve (the default), keys, tenants, suppressions,
    dead-letters and erase, and --version."""
    _, out, _ = exits(capsys, "--help")
    assert "{serve,keys,tenants,suppressions,dead-letters,erase}" in out
    assert "serve run the service (the default command)" in out
    assert "--version" in out


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """A test whose command sets up logging (as the command line does) leaves the set-up
    of the tests after it as it was."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(root_level)
        logging.captureWarnings(False)


@pytest.mark.usefixtures("logging_restored")
def test_serve_is_the_default_command(capsys: pytest.CaptureFixture[str]) -> None:
    """Flags without a command are serve's: both forms refuse a bad port alike, exit 2, with
    one JSON line (config.invalid) naming what is wrong."""

    def refusal() -> dict[str, object]:
        (line,) = capsys.readouterr().err.splitlines()
        event: dict[str, object] = json.loads(line)
        del event["timestamp"]
        return event

    assert main(["--port", "x"]) == 2
    bare = refusal()
    assert main(["serve", "--port", "x"]) == 2
    assert refusal() == bare
    assert bare["event"] == "config.invalid"
    assert bare["detail"] == "port must be a whole number, got 'x'"


def test_flags_before_a_command_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A command after the service's flags is no command: argparse refuses it (exit 2)."""
    code, _, err = exits(capsys, "--port", "1", "keys", "list")
    assert code == 2
    assert "unrecognized arguments: keys list" in err


@pytest.mark.parametrize(
    ("level", "flag", "var", "default"),
    [
        ((), "--store", "MAILMAN_STORE", Config().store),
        (("keys",), "--store", "MAILMAN_STORE", Config().store),
        (("keys", "list"), "--store", "MAILMAN_STORE", Config().store),
        (("dead-letters", "list"), "--store", "MAILMAN_STORE", Config().store),
        (("dead-letters", "replay"), "--store", "MAILMAN_STORE", Config().store),
        (("dead-letters", "replay"), "--broker", "MAILMAN_BROKER", Config().broker),
        (("erase",), "--store", "MAILMAN_STORE", Config().store),
        (
            ("dead-letters", "replay"),
            "--topic-prefix",
            "MAILMAN_KAFKA_TOPIC_PREFIX",
            Config().kafka.topic_prefix,
        ),
    ],
)
def test_the_tools_flags_are_the_service_settings(
    capsys: pytest.CaptureFixture[str], level: tuple[str], flag: str, var: str, default: str
) -> None:
    """keys' and dead-letters' --store, --broker, --topic-prefix show the service's variable
    and default."""
    _, out, _ = exits(capsys, *level, "--help")
    line = re.search(rf"{re.escape(flag)} [A-Z]+ [^()]*\(default: (\S+); env (\w+)", out)
    assert line is not None, out
    assert (line[1], line[2]) == (default, var)


def test_keys_help_shows_the_store_in_effect_without_its_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mailman keys --help`` says which store MAILMAN_STORE names now, password masked."""
    monkeypatch.setenv("MAILMAN_STORE", "mysql://u:s3cret@db.example/mail")
    _, out, _ = exits(capsys, "keys", "--help")
    assert "now: mysql://u:********@db.example/mail)" in out
    assert "s3cret" not in out


def test_dead_letters_reads_the_store_from_the_environment(tmp_path: Path) -> None:
    """``dead-letters list`` opens MAILMAN_STORE's store; a bad one is exit 2; --store wins."""
    db = tmp_path / "letters.db"
    out, err = io.StringIO(), io.StringIO()
    env = {"MAILMAN_STORE": sqlite_store(db)}
    assert main(["dead-letters", "list", "--json"], env, out=out, err=err) == 0
    assert (out.getvalue(), err.getvalue()) == ("", "")
    err = io.StringIO()
    bad = {"MAILMAN_STORE": "foo://x"}
    assert main(["dead-letters", "list"], bad, out=io.StringIO(), err=err) == 2
    assert err.getvalue().startswith("mailman dead-letters: unsupported store 'foo'")
    flagged = ["dead-letters", "list", "--store", f"sqlite:///{db}"]
    assert main(flagged, bad, out=io.StringIO(), err=io.StringIO()) == 0


#: Each tool and arguments that run it against a store without changing it.
TOOLS = (
    ("keys", ["list"]),
    ("tenants", ["list"]),
    ("dead-letters", ["list"]),
    ("erase", ["--address", "nobody@example.com"]),
)


@pytest.mark.parametrize(("tool", "action"), TOOLS, ids=[t for t, _ in TOOLS])
@pytest.mark.parametrize("where", ["flag", "flag-after", "env"])
def test_the_tools_refuse_a_sqlite_store_that_does_not_exist(
    tmp_path: Path, tool: str, action: list[str], where: str
) -> None:
    """keys, dead-letters and erase exit 2 with one line naming a SQLite file that does not
    exist, however --store is given, and create nothing."""
    db = tmp_path / "typo.db"
    url = f"sqlite:///{db}"
    argv, env = {
        "flag": ([tool, "--store", url, *action], {}),
        "flag-after": ([tool, *action, "--store", url], {}),
        "env": ([tool, *action], {"MAILMAN_STORE": url}),
    }[where]
    out, err = io.StringIO(), io.StringIO()
    assert main(argv, env, out=out, err=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith(f"mailman {tool}: no store at {db}:")
    assert not db.exists()


@pytest.mark.parametrize(("tool", "action"), TOOLS, ids=[t for t, _ in TOOLS])
@pytest.mark.parametrize("before", [True, False])
def test_the_tools_take_store_before_or_after_the_action(
    tmp_path: Path, tool: str, action: list[str], before: bool
) -> None:
    """keys, dead-letters and erase take --store before or after their action, over the
    environment."""
    url = sqlite_store(tmp_path / "real.db")
    argv = [tool, "--store", url, *action] if before else [tool, *action, "--store", url]
    env = {"MAILMAN_STORE": f"sqlite:///{tmp_path / 'elsewhere.db'}"}
    err = io.StringIO()
    assert main(argv, env, out=io.StringIO(), err=err) == 0, err.getvalue()
    assert not (tmp_path / "elsewhere.db").exists()


@pytest.mark.parametrize("tool", ["keys", "tenants", "dead-letters", "erase"])
def test_the_tools_say_store_the_same_way(capsys: pytest.CaptureFixture[str], tool: str) -> None:
    """keys, dead-letters and erase show one and the same --store help at their top level."""
    _, out, _ = exits(capsys, tool, "--help")
    line = re.search(r"--store URL (.*?\))", out)
    assert line is not None, out
    assert line[1].startswith("store URL, as the service's (default: ")
