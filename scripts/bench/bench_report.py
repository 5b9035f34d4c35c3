"""`blatam bench report`: run every benchmark, the soak and the fault drills, and write BENCHMARKS.md with plots.

Each part runs as a subprocess (its own interpreter and private Ray, so one
that crashes, hangs or leaks cannot take the others with it) writing its
``--json`` into a work folder, its output into ``<part>.log`` there. A part
that fails is reported on the page with its last lines, never aborting the
rest. Then `report_plots` draws the figures from the JSON and
`report_markdown` renders the page. `plan` (which commands, what sizes) is
pure; `run_parts` is the only code that runs anything.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scripts.bench import bench_app
from scripts.bench.report import console

if TYPE_CHECKING:
    from scripts.bench.report_markdown import PartOutcome

ROOT = Path(__file__).resolve().parents[2]
"""The repository: the fault and soak tests run from here."""
PARTS = ("ttft", "dataplane", "coordinator", "policies", "serve", "prefill", "services", "peers", "soak", "faults")
TAIL_LINES = 25


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each part runs: `FULL` (~25 min on 2 shared cores) or `QUICK` (~15 min: smaller samples; most of
    what is left is starting Ray, Serve and the test stacks)."""

    ttft_lengths: tuple[int, ...]
    ttft_runs: int
    dataplane_repeats: int
    coordinator_max_blocks: int
    policies_requests: int
    serve_args: tuple[str, ...]
    prefill_args: tuple[str, ...]
    services_jobs: int
    soak_s: int
    faults: tuple[str, ...]
    """Fault names to run (``-k``); empty: all of them."""
    timeout_s: int


FULL = Sizes(ttft_lengths=(256, 512, 1024, 2048), ttft_runs=5, dataplane_repeats=11,
             coordinator_max_blocks=1_000_000, policies_requests=4000, serve_args=("--requests", "64"), prefill_args=(), services_jobs=12, soak_s=120,
             faults=(), timeout_s=1800)
QUICK = Sizes(ttft_lengths=(256, 1024), ttft_runs=1, dataplane_repeats=3, coordinator_max_blocks=100_000,
              policies_requests=1000, serve_args=("--quick",), prefill_args=("--long-tokens", "768", "--trials", "1"),
              services_jobs=4, soak_s=60, faults=("kv_shard_killed", "llm_replica_killed"), timeout_s=900)


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a part and the JSON it must leave."""

    label: str
    argv: tuple[str, ...]
    """After the interpreter: ``-m scripts.cli bench ...`` or ``-m pytest ...``."""
    output: Path
    env: Mapping[str, str] = field(default_factory=dict)

    def shown(self, work: Path) -> str:
        """As a person would type it, the work folder written ``<work>``."""
        words = list(self.argv)
        words = ["blatam", *words[2:]] if words[:2] == ["-m", "scripts.cli"] else ["pytest", *words[2:]]
        env = [f"{k}={v}" for k, v in self.env.items()]
        return shlex.join(env + words).replace(str(work), "<work>")


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    steps: tuple[Step, ...]


def _bench(name: str, out: Path, *args: str) -> tuple[str, ...]:
    return ("-m", "scripts.cli", "bench", name, *args, "--json", str(out))


def plan(work: Path, sizes: Sizes, *, peer_url: str | None = None, peer_name: str = "vLLM-CPU") -> list[Part]:
    """Every part and its commands, in the order they run (`peers` only with a peer to run against)."""
    # One process (-n 0, not pyproject's two workers): a measurement wants the machine to itself, and its table shown.
    pytest = ("-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider")
    faults_k = ("-k", " or ".join(sizes.faults)) if sizes.faults else ()
    soak_env = {"BLATAM_SOAK_S": str(sizes.soak_s), "BLATAM_SOAK_JSON": str(work / "soak.json")}
    parts = [
        Part("ttft", tuple(Step(f"{n} tokens", _bench("ttft", work / f"ttft-{n}.json", "--prompt-tokens", str(n),
                                                        "--runs", str(sizes.ttft_runs)), work / f"ttft-{n}.json")
                           for n in sizes.ttft_lengths)),
        Part("dataplane", (Step("dataplane", _bench("dataplane", work / "dataplane.json", "--repeats",
                                                    str(sizes.dataplane_repeats)), work / "dataplane.json"),)),
        Part("coordinator", (Step("coordinator", _bench("coordinator", work / "coordinator.json", "--max-blocks",
                                                        str(sizes.coordinator_max_blocks)), work / "coordinator.json"),)),
        Part("policies", (Step("mixed workload", _bench("policies", work / "policies.json", "--workload", "mixed",
                                                        "--requests", str(sizes.policies_requests)),
                               work / "policies.json"),)),
        Part("serve", (Step("serve", _bench("serve", work / "serve.json", *sizes.serve_args), work / "serve.json"),)),
        Part("prefill", (Step("prefill", _bench("prefill", work / "prefill.json", *sizes.prefill_args),
                              work / "prefill.json"),)),
        Part("services", (Step("services", _bench("services", work / "services.json", "--jobs",
                                                  str(sizes.services_jobs)), work / "services.json"),)),
        Part("peers", (Step("peers", _bench("peers", work / "peers.json", "--peer-url", peer_url or "",
                                            "--peer-name", peer_name), work / "peers.json"),)),
        Part("soak", (Step(f"soak {sizes.soak_s} s", (*pytest, "tests/deployments/test_soak.py"), work / "soak.json",
                           soak_env),)),
        Part("faults", (Step("fault drills", (*pytest, "tests/faults/test_faults.py", *faults_k), work / "faults.json",
                             {"BLATAM_FAULTS_JSON": str(work / "faults.json")}),)),
    ]
    return [p for p in parts if p.name != "peers" or peer_url]


def load_results(parts: Sequence[Part]) -> dict[str, Any]:
    """Part name -> its JSON (`ttft`: the list of one document per length), None where nothing readable was left."""
    results: dict[str, Any] = {}
    for part in parts:
        docs = []
        for step in part.steps:
            try:
                docs.append(json.loads(step.output.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        results[part.name] = (docs or None) if part.name == "ttft" else (docs[0] if docs else None)
    return results


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail(log: Path, lines: int = TAIL_LINES) -> str:
    """What a failed part shows on the page: pytest's failure lines if any (``E ...``, ``FAILED ...``), else the
    last lines of its log; colour codes removed, each line cut at 300 characters."""
    try:
        text = ANSI.sub("", log.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return "(no output)"
    kept = [line.rstrip()[:300] for line in text.splitlines() if line.strip()]
    pytest = [line for line in kept if line.startswith(("E ", "FAILED ", "ERROR "))]
    if pytest:
        return "\n".join(pytest[:lines] + kept[-1:])
    return "\n".join(kept[-lines:]) or "(no output)"


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the step's own process group (it runs in a session of its own), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, log: Path, timeout_s: float) -> tuple[int, str]:
    """Run one command with its output into ``log``; (exit status, why it failed or "")."""
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1", **step.env}
    step.output.unlink(missing_ok=True)
    with log.open("ab") as sink:
        sink.write(f"\n$ {shlex.join(step.argv)}\n".encode())
        sink.flush()
        process = subprocess.Popen([sys.executable, *step.argv], cwd=ROOT, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(process)
            return 124, f"timed out after {timeout_s:g} s\n" + tail(log)
        except BaseException:  # Ctrl-C: the step's processes go too
            _stop_group(process)
            raise
    if code != 0:
        return code, f"exit status {code}\n" + tail(log)
    if not step.output.exists():
        return 1, f"exited 0 but wrote no {step.output.name} (skipped?)\n" + tail(log)
    return 0, ""


def run_parts(parts: Sequence[Part], work: Path, *, skip: Sequence[str], timeout_s: float, reuse: bool) -> list[PartOutcome]:
    """Every part in turn under a rich progress display; a failure is recorded and the next part runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from scripts.bench.report_markdown import PartOutcome

    outcomes: dict[str, PartOutcome] = {}
    columns = (SpinnerColumn(finished_text="-"), TextColumn("{task.description:<40}"), BarColumn(bar_width=20),
               MofNCompleteColumn(), TimeElapsedColumn())
    running = [p for p in parts if p.name not in skip]
    if len(running) < len(parts):
        console.print(f"[dim]skipped (--skip): {', '.join(p.name for p in parts if p.name in skip)}[/dim]")
    with Progress(*columns, console=console) as progress:
        tasks = {p.name: progress.add_task(p.name, total=len(p.steps), start=False) for p in running}
        for part in running:
            task, started, errors, reused = tasks[part.name], time.monotonic(), [], 0
            progress.start_task(task)
            for step in part.steps:
                progress.update(task, description=f"{part.name}: {step.label}")
                if reuse and step.output.exists():
                    reused += 1
                    progress.advance(task)
                    continue
                try:
                    code, why = run_step(step, work / f"{part.name}.log", timeout_s)
                except KeyboardInterrupt:
                    progress.update(task, description=f"[red]{part.name}: interrupted")
                    outcomes[part.name] = PartOutcome(part.name, "failed", time.monotonic() - started,
                                                      "interrupted (Ctrl-C)", [s.shown(work) for s in part.steps])
                    break
                if code:
                    errors.append(f"{step.label}: {why}")
                progress.advance(task)
            if part.name in outcomes:  # interrupted: the parts after it are not run
                break
            progress.stop_task(task)
            status = "failed" if errors else "ok"
            progress.update(task, description=f"[{'red' if errors else 'green'}]{part.name}: {status}")
            outcomes[part.name] = PartOutcome(part.name, status, time.monotonic() - started, "\n\n".join(errors),
                                              [s.shown(work) for s in part.steps], reused=reused)
    return [outcomes.get(p.name) or PartOutcome(p.name, "skipped", detail="--skip" if p.name in skip else "interrupted",
                                                steps=[s.shown(work) for s in p.steps]) for p in parts]


@bench_app.command("report")
def report_command(
    out: Annotated[Path, typer.Option("--out", help="The page to write.")] = Path("BENCHMARKS.md"),
    plots: Annotated[Path | None, typer.Option("--plots", help="Folder of the PNG plots (default: docs/benchmarks "
                                                               "next to --out).")] = None,
    work: Annotated[Path | None, typer.Option("--work", help="Folder for each part's JSON and log (default: a new "
                                                             "temporary folder, kept).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller sizes: ~15 min on 2 cores instead of ~25.")] = False,
    skip: Annotated[list[str] | None, typer.Option("--skip", help=f"Leave a part out (repeatable): "
                                                                  f"{', '.join(PARTS)}.")] = None,
    peer_url: Annotated[str | None, typer.Option("--peer-url", help="Also run `bench peers` against this "
                                                                    "OpenAI API (up to /v1).")] = None,
    peer_name: Annotated[str, typer.Option("--peer-name", help="The peer's name on the page.")] = "vLLM-CPU",
    timeout_s: Annotated[int | None, typer.Option("--timeout", min=1, help="Seconds one command may run "
                                                                            "(default 1800; quick 900).")] = None,
    reuse: Annotated[bool, typer.Option("--reuse", help="Keep results already in --work instead of rerunning "
                                                        "those commands (re-render a page).")] = False,
) -> None:
    """Run the benchmarks, the soak and the fault drills; write BENCHMARKS.md with tables and PNG plots."""
    from scripts.bench.report_host import run_info
    from scripts.bench.report_markdown import render_page
    from scripts.bench.report_plots import write_plots

    unknown = sorted(set(skip or ()) - set(PARTS))
    if unknown:
        raise typer.BadParameter(f"unknown parts {unknown}; parts: {', '.join(PARTS)}", param_hint="--skip")
    sizes = QUICK if quick else FULL
    work = (work or Path(tempfile.mkdtemp(prefix="blatam-report-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    plots = (plots or out.parent / "docs" / "benchmarks").resolve()
    parts = plan(work, sizes, peer_url=peer_url, peer_name=peer_name)
    console.print(f"blatam bench report ({'quick' if quick else 'full'}): JSON and logs in {work}")
    load, started = os.getloadavg(), time.monotonic()
    outcomes = run_parts(parts, work, skip=skip or (), timeout_s=timeout_s or sizes.timeout_s, reuse=reuse)
    results = load_results(parts)
    written, plot_errors = write_plots(results, plots)
    page_dir = out.resolve().parent
    relative = {name: Path(os.path.relpath(path, page_dir)).as_posix() for name, path in written.items()}
    command = "blatam bench report" + (" --quick" if quick else "")
    info = run_info("quick" if quick else "full", command, time.monotonic() - started, load, ROOT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_page(info, outcomes, results, relative, plot_errors), encoding="utf-8")
    failed = [o.name for o in outcomes if o.status == "failed"]
    console.print(f"wrote {out} and {len(written)} plots in {plots}"
                  + (f"; [red]failed: {', '.join(failed)}[/red] (logs in {work})" if failed else ""))
    if failed:
        raise typer.Exit(1)
