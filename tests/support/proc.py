"""The process tree of a PID, read from /proc (for the argv/environ leak scans)."""

from __future__ import annotations

from pathlib import Path


def parent(pid: int) -> int:
    """The parent PID of ``pid`` (0 when it is gone)."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name is in parentheses and may contain spaces: parse after the last ')'.
    return int(line[line.rfind(")") + 2 :].split()[1])


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from every process's parent in /proc/*/stat.

    (``/proc/PID/task/TID/children`` misses children of threads that have exited.)
    """
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and parent(int(entry.name)) == pid
    ]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, alive now."""
    found: list[int] = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant alive now."""
    return [root, *descendants(root)]
