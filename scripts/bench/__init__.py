"""`blatam bench ...`: benchmarks that print a table and write JSON.

Every benchmark reports ratios measured in one run (cached vs uncached, ours vs
ideal), never a bare time as a pass/fail verdict.
"""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Benchmarks: print a table and write JSON.", no_args_is_help=True)

# Each module adds its command to bench_app on import.
from scripts.bench import ttft as _ttft  # noqa: E402,F401
from scripts.bench import policies as _policies  # noqa: E402,F401
from scripts.bench import redundancy as _redundancy  # noqa: E402,F401
from scripts.bench import gateway as _gateway  # noqa: E402,F401
from scripts.bench import dataplane as _dataplane  # noqa: E402,F401
from scripts.bench import coordinator as _coordinator  # noqa: E402,F401
from scripts.bench import serve as _serve  # noqa: E402,F401
from scripts.bench import prefill_stall as _prefill_stall  # noqa: E402,F401
from scripts.bench import quality as _quality  # noqa: E402,F401
from scripts.bench import services as _services  # noqa: E402,F401
from scripts.bench import agents as _agents  # noqa: E402,F401
from scripts.bench import peers as _peers  # noqa: E402,F401
from scripts.bench import bench_report as _bench_report  # noqa: E402,F401
