"""How many CPU threads the tool's work runs on, and how its idle threads wait.

Torch's intra-op threads (OpenMP) split every operation evenly and wait for the slowest; idle, they spin.
On a machine where another job holds a core, a second thread is descheduled for whole time slices, and
every operation waits for it: measured here with another job running, the zoo's diffusion network took
0.6–0.84 s per forward pass with torch at 2 threads against 3–8 ms at 1 (``benchmarks/
attribute_breakdown.py`` shows it with a competing load). So the command line:

- lets idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``),
  set before torch starts, unless the user has set them;
- runs on as many threads as there are idle cores *now*, measured over a few tens of milliseconds from
  the kernel's per-CPU counters (``/proc/stat``; elsewhere the load average), at least one, at most the
  CPUs this process may use (affinity and a cgroup quota). ``--threads N`` or ``FORENSICS_THREADS=N``
  fixes the number; so does ``OMP_NUM_THREADS`` when set. Results never depend on it: the statistic's
  jobs compute the same thing on any thread (:mod:`forensics.stats.ct.threads`).

The command line asks for this (:func:`command_line`, :func:`request`); the first engine of the run
applies it (:func:`apply_requested`), so a command that computes nothing measures nothing. A library
caller keeps torch's own settings, unless ``FORENSICS_THREADS`` is set or it calls :func:`configure`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

from forensics.errors import UsageError

ENV = "FORENSICS_THREADS"
#: the OpenMP settings made before torch starts (a user's own values are kept)
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
#: how long the idle cores are measured
WINDOW_S = 0.05
_SET: dict[str, str] = {}  # what configure() put in the environment (not the user's own setting)
_STATE: dict = {"command_line": False, "request": None, "requested": False, "applied": None}


@dataclass(frozen=True)
class Threads:
    """The thread count chosen and why: ``how`` is "--threads", the environment variable that set it, or
    "measured: … idle of … CPUs"."""

    count: int
    how: str

    def to_dict(self) -> dict:
        return {"threads": self.count, "how": self.how}


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity set, within a cgroup CPU quota when there is one."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    """The cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) CPU quota in CPUs, or None."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _cpu_times() -> dict[int, tuple[int, int]] | None:
    """Per CPU: (idle jiffies, total jiffies) from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *fields = line.split()
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            out[int(name[3:])] = (values[3] + values[4], sum(values))
    return out or None


def idle_cpus(window: float = WINDOW_S) -> float | None:
    """How many of this process's CPUs were idle over the last ``window`` seconds (a fraction each,
    summed); None where the kernel's counters cannot be read."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(window)
    after = _cpu_times() or {}
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # pragma: no cover
        mine = set(after)
    idle = 0.0
    for cpu in mine:
        if cpu in before and cpu in after:
            d_idle, d_total = after[cpu][0] - before[cpu][0], after[cpu][1] - before[cpu][1]
            idle += d_idle / d_total if d_total > 0 else 1.0
    return idle


def measured_threads(window: float = WINDOW_S) -> Threads:
    """Threads for the cores idle now: the idle fractions summed and rounded down (a core counts when
    it was more than 80 % idle), at least one, at most :func:`usable_cpus`. Too few threads cost at most
    their share of a core; one too many on a busy core costs far more (see the module docstring)."""
    usable = usable_cpus()
    idle = idle_cpus(window)
    if idle is None:  # pragma: no cover - no /proc: the load average says how busy the machine is
        try:
            idle = max(0.0, usable - os.getloadavg()[0])
        except (AttributeError, OSError):
            idle = float(usable)
    count = max(1, min(usable, math.floor(idle + 0.2)))
    return Threads(count, f"measured: {idle:.1f} of {usable} CPUs idle")


def parse_threads(value: str | int | None, source: str = "--threads") -> int | None:
    """A thread count from the command line or the environment: a positive integer, or "auto" (None)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1:
        raise UsageError(f"{source} takes a positive number of threads or 'auto', not {value!r}")
    return n


def choose(value: str | int | None = None) -> Threads:
    """The thread count: ``value`` (``--threads``), else ``FORENSICS_THREADS``, else ``OMP_NUM_THREADS``,
    else measured (:func:`measured_threads`)."""
    n = parse_threads(value)
    if n is not None:
        return Threads(n, "--threads")
    n = parse_threads(os.environ.get(ENV), ENV)
    if n is not None:
        return Threads(n, ENV)
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) > 0 and os.environ.get("OMP_NUM_THREADS") != _SET.get("OMP_NUM_THREADS"):
        return Threads(int(omp), "OMP_NUM_THREADS")
    return measured_threads()


def configure(value: str | int | None = None) -> Threads:
    """Choose the thread count (:func:`choose`) and apply it: before torch starts, through the
    environment (with the OpenMP wait policy :data:`WAIT_POLICY`, unless set); after, through torch
    and numpy's BLAS. The command line calls this once per run."""
    chosen = choose(value)
    for key, setting in WAIT_POLICY.items():
        os.environ.setdefault(key, setting)
    n = str(chosen.count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(chosen.count)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _SET["OMP_NUM_THREADS"] = n
    if "numpy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover
            pass
        else:
            threadpool_limits(chosen.count, user_api="blas")
    else:
        os.environ["OPENBLAS_NUM_THREADS"] = n
    return chosen


def command_line() -> None:
    """Called first by the ``forensics`` program: idle OpenMP threads will sleep (:data:`WAIT_POLICY`,
    before torch starts), and the thread count is measured when a run starts computing, unless set."""
    for key, setting in WAIT_POLICY.items():
        os.environ.setdefault(key, setting)
    _STATE["command_line"] = True


def request(value: str | int | None) -> None:
    """Record the command line's ``--threads`` (checked now; applied by :func:`apply_requested`)."""
    parse_threads(value)
    _STATE["request"], _STATE["requested"] = value, True


def apply_requested() -> Threads | None:
    """Apply the thread count once per run (:func:`configure`) where one is asked for: by ``--threads``,
    ``FORENSICS_THREADS``, or measured in the ``forensics`` program. Returns it, or None (torch's own)."""
    if not _STATE["requested"] and _STATE["applied"] is not None:
        return _STATE["applied"]
    explicit = parse_threads(_STATE["request"]) is not None or parse_threads(os.environ.get(ENV), ENV) is not None
    if not (_STATE["command_line"] or explicit):
        return None
    _STATE["applied"] = configure(_STATE["request"])
    _STATE["request"], _STATE["requested"] = None, False
    return _STATE["applied"]


def applied() -> Threads | None:
    """The thread setting applied in this process, if any."""
    return _STATE["applied"]
