"""CPU seconds per process: on a shared machine, steadier than wall-clock figures."""

from __future__ import annotations


class CpuMeter:
    """CPU seconds (user + system) each process used inside a ``with`` block.

    On a shared 2-core machine wall-clock figures move with other people's load;
    CPU per byte or per round trip does not, so it shows where the cost is.
    """

    def __init__(self, pids: dict[str, int]):
        import psutil  # test extra; only benchmarks need it

        self._procs = {role: psutil.Process(pid) for role, pid in pids.items()}
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out = {}
        for role, proc in self._procs.items():
            times = proc.cpu_times()
            out[role] = times.user + times.system
        return out

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.used = {role: end[role] - self._start[role] for role in end}

    def per_unit(self, amount: float, scale: float = 1.0) -> dict[str, float]:
        """CPU time per ``amount`` units, times ``scale``, for each role and in total."""
        out = {role: used / amount * scale for role, used in self.used.items()}
        out["total"] = sum(out.values())
        return out

    def per(self, amount: float, scale: float = 1.0) -> str:
        """The same as ``per_unit``, as text: ``relay 1.23, agent ..., total ...``."""
        return ", ".join(f"{r} {v:.2f}" for r, v in self.per_unit(amount, scale).items())
