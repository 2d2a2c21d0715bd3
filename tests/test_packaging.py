"""The Docker image's install (``pip install .`` of the copied sources) carries every package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What the Dockerfile copies before ``pip install .``.
COPIED = ("pyproject.toml", "README.md", "mailman.py", "actors", "routes", "config")


def test_the_wheel_holds_every_package_of_the_source_tree(tmp_path: Path) -> None:
    """Every package (a directory with __init__.py) under actors/, routes/ and config/,
    and mailman.py, is in the wheel built from what the Dockerfile copies."""
    source = tmp_path / "src"
    source.mkdir()
    for name in COPIED:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("mailman-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(
        str(init.parent.relative_to(ROOT))
        for top in ("actors", "routes", "config")
        for init in (ROOT / top).rglob("__init__.py")
    )
    assert packages, "no packages found in the source tree"
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert missing == [], f"packages left out of the wheel: {missing}"
    assert "mailman.py" in names
