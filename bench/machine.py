"""Which machine a run was measured on (nproc, CPU model, RAM, load, versions)."""

from __future__ import annotations

import os
import platform
import re
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", CPUINFO.read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1).strip() if match else (platform.processor() or "unknown")


def ram_bytes() -> int | None:
    """Total RAM in bytes (``/proc/meminfo``), or None when unknown."""
    try:
        match = re.search(r"^MemTotal:\s*(\d+) kB", MEMINFO.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def host_kind() -> str:
    """A file-name-safe label of the machine kind, e.g. ``2cpu-amd-epyc``."""
    model = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")[:32] or "cpu"
    return f"{os.cpu_count() or 0}cpu-{model}"


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages (other processes competing for the cores), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def describe() -> dict[str, Any]:
    """The machine and software versions, for the results JSON."""
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    ram = ram_bytes()
    return {
        "host_kind": host_kind(),
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": None if ram is None else round(ram / (1 << 30), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "concrete_ml": version("concrete-ml"),
        "concrete_python": version("concrete-python"),
        "loadavg_start": loadavg(),
    }


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (``/proc/<pid>/status`` VmRSS), or None."""
    try:
        match = re.search(r"^VmRSS:\s*(\d+) kB", Path(f"/proc/{pid}/status").read_text(),
                          re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None
