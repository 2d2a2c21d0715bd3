"""The README's examples work as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def embedded_example(readme: Path) -> str:
    """The first ```python block under the ``## Embedded`` heading of ``readme``."""
    text = readme.read_text(encoding="utf-8")
    section = re.search(r"^## Embedded.*?(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert section is not None, f"{readme.name} has no '## Embedded' section"
    block = re.search(r"^```python\n(.*?)^```", section[0], flags=re.MULTILINE | re.DOTALL)
    assert block is not None, "the Embedded section has no ```python block"
    return block[1]


def run_embedded_example(readme: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run the README's embedded example as a user would: plain pytest, none of our config."""
    (workdir / "test_example.py").write_text(embedded_example(readme), encoding="utf-8")
    # An empty ini file pins pytest's rootdir here, so no config further up applies.
    (workdir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_embedded_example_passes_under_plain_pytest(tmp_path: Path) -> None:
    """The README's Embedded example, copied as is into a test file, passes under plain pytest."""
    result = run_embedded_example(ROOT / "README.md", tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output, output
