"""Peak resident memory of a CLI run in a child process."""

from __future__ import annotations

import sys
from pathlib import Path

# The CLI under a wrapper that writes its own VmHWM at exit: getrusage's ru_maxrss would start from the parent
# process's size at fork (Linux keeps it across exec), while VmHWM belongs to the new program's address space.
PEAK_WRAPPER = (
    "import atexit, runpy, sys\n"
    "peak_file = sys.argv[1]\n"
    "def record():\n"
    "    with open('/proc/self/status') as status, open(peak_file, 'w') as out:\n"
    "        out.write(next(line for line in status if line.startswith('VmHWM:')).split()[1])\n"
    "atexit.register(record)\n"
    "sys.argv = sys.argv[2:]\n"
    "runpy.run_path('cli.py', run_name='__main__')\n"
)


def measured_cli(peak_file: Path, args: list[str]) -> list[str]:
    """The command line that runs ``cli.py args`` (from the repository root) and writes its peak kB to
    ``peak_file``."""
    return [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), "cli.py", *args]


def vm_hwm_kb(pid: int | str) -> int | None:
    """A running process's peak resident memory in kB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        return None
