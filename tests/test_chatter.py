"""Third-party output written straight to file descriptors 1 and 2 lands in the log, not on the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_native_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path):
    log = tmp_path / "logs" / "export.log"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from pipelines.chatter import third_party_output_to\n"
        f"with third_party_output_to(Path({str(log)!r})) as terminal:\n"
        "    os.write(1, b'[START] converter progress\\n')\n"
        "    os.write(2, b'I0000 absl log line\\n')\n"
        "    print('a python print from a library')\n"
        "    terminal.write('ours: converting\\n')\n"
        "print('after: back on stdout')\n"
        "sys.stderr.write('after: back on stderr\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout == "ours: converting\nafter: back on stdout\n"
    assert result.stderr == "after: back on stderr\n"
    logged = log.read_text()
    assert "[START] converter progress" in logged and "absl log line" in logged and "python print" in logged


def test_verbose_keeps_native_output_on_the_terminal():
    script = (
        "import os\n"
        "from pipelines.chatter import third_party_output_to\n"
        "with third_party_output_to(None) as terminal:\n"
        "    os.write(1, b'[START] converter progress\\n')\n"
        "    terminal.write('ours: converting\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout == "[START] converter progress\nours: converting\n"


def test_verbose_is_an_option_of_every_command():
    result = subprocess.run([sys.executable, "cli.py", "--verbose", "export", "--dims", "0"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: --dims"), result.stderr
