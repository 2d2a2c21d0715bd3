"""Mailman installs as one package, ``mailman``, and lives beside an app's own packages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What the Dockerfile copies before ``pip install .``.
COPIED = ("pyproject.toml", "README.md", "mailman")

pytestmark = pytest.mark.slow


def embedded_example(readme: Path) -> str:
    """The first ```python block under the ``## Embedded`` heading of ``readme``."""
    text = readme.read_text(encoding="utf-8")
    section = re.search(r"^## Embedded.*?(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert section is not None, f"{readme.name} has no '## Embedded' section"
    block = re.search(r"^```python\n(.*?)^```", section[0], flags=re.MULTILINE | re.DOTALL)
    assert block is not None, "the Embedded section has no ```python block"
    return block[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from what the Dockerfile copies."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in COPIED:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = wheels.glob("mailman-*.whl")
    return built


def test_the_wheel_holds_every_package_of_mailman_and_nothing_else(wheel: Path) -> None:
    """Every package under mailman/ is in the wheel, and nothing but mailman is at its top."""
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(
        str(init.parent.relative_to(ROOT)) for init in (ROOT / "mailman").rglob("__init__.py")
    )
    assert "mailman" in packages
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert missing == [], f"packages left out of the wheel: {missing}"
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mailman"}


def test_the_wheel_carries_the_dashboard_files(wheel: Path) -> None:
    """The dashboard's page, style and script (package data) are in the wheel, as they are
    in the source."""
    names = set(zipfile.ZipFile(wheel).namelist())
    static = ROOT / "mailman" / "routes" / "static"
    files = sorted(f"mailman/routes/static/{p.name}" for p in static.iterdir() if p.is_file())
    assert {f"mailman/routes/static/dashboard.{ext}" for ext in ("html", "css", "js")} <= set(files)
    assert [f for f in files if f not in names] == []


def test_the_wheel_carries_the_store_migrations(wheel: Path) -> None:
    """Every migration script of the store (``mailman/store/migrations/<dialect>/*.sql``,
    package data) is in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "mailman/store/migrations").rglob("*.sql")
    )
    assert {script.split("/")[3] for script in scripts} == {"sqlite", "mysql"}
    assert [script for script in scripts if script not in names] == []


def _fresh_venv(where: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed; its python.

    Mailman's dependencies come from the test environment's site-packages,
    added behind the new environment's own (a ``.pth`` line: the directories
    it names are not site directories, so their own ``.pth`` files, such as
    the editable install of this checkout, stay inert).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def test_an_app_with_its_own_config_routes_and_actors_runs_the_embedded_example(
    wheel: Path, tmp_path: Path
) -> None:
    """Installed from the wheel beside an app that has its own ``config``, ``routes`` and
    ``actors`` packages, the README's Embedded example passes and the app's imports stay its own."""
    python = _fresh_venv(tmp_path / "venv", wheel)
    app = tmp_path / "app"
    for package in ("config", "routes", "actors"):
        (app / package).mkdir(parents=True)
        (app / package / "__init__.py").write_text(f'OWNER = "app"\nNAME = "{package}"\n')
    (app / "config" / "settings.py").write_text("DEBUG = False\n")
    (app / "test_example.py").write_text(embedded_example(ROOT / "README.md"))
    (app / "test_own_packages.py").write_text(
        "import actors\nimport config.settings\nimport routes\n\nimport mailman\n\n\n"
        "def test_the_apps_packages_are_its_own():\n"
        "    assert (config.OWNER, routes.OWNER, actors.OWNER) == ('app',) * 3\n"
        "    assert config.settings.DEBUG is False\n"
        f"    assert {str(tmp_path / 'venv')!r} in mailman.__file__\n"
    )
    # An empty ini file pins pytest's rootdir here, so no config further up applies.
    (app / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "2 passed" in output, output
