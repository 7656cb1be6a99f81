"""`make gpu-check`: the GPU check in stages that fit one short run on a GPU machine without
network (at most 8 minutes, the build included); `--dry-run`: the same plumbing on the CPU in
seconds (`make gpu-check-dry`, run by CI).

Each stage is a subprocess in a process group of its own with a time budget; past it the group
is killed (the build's nvcc jobs included) and the stage is recorded as timed out, and the next
stage runs. A stage may also use the time earlier stages left unused: none gets less than its
budget and the run never takes longer than their sum. The moment a stage ends, its result is in
<out>/<stage>.json (status, times, command, details) and <out>/<stage>.md, and <out>/summary.md
(the report: the machine, a table of the stages, each stage's section) is rewritten. While a
stage runs, its output streams to <out>/<stage>.log and its json says "running". So a run killed
at any point leaves everything that finished, and how far the running stage got.

Stages and budgets in seconds (STAGES below):

    machine          20  the GPU (nvidia-smi), driver, torch, CUDA, nvcc, compute-sanitizer
    build           165  the extension in place against this machine's torch (MAX_JOBS = the cores,
                         TORCH_CUDA_ARCH_LIST = the GPU's compute capability)
    import           20  the new build imports, has the CUDA kernels and sees the GPU; which test packages are present
    cuda-tests      100  pytest tests -m "cuda and not slow": the CUDA op tests against the reference
    cuda-behaviour   40  pytest tests/test_cuda_behaviour.py: CUDA graphs, no synchronisation, streams, a second GPU
    memcheck         35  compute-sanitizer --tool memcheck over benchmarks/sanitizer_workload.py
    racecheck        30  the same with racecheck
    initcheck        30  the same with initcheck
    bench            30  2^24 elements: anacuda, its eager peers (fake_quantize, the learnable fake-quantisers,
                         BitNet's quantiser) and the copy limit (the slow reference and compiled rows left out)
                    ---
                    470  (8 minutes = 480 s; the rest is left for start-up and killing)

    python3 benchmarks/gpu_check.py                    # every stage; clears the earlier results first
    python3 benchmarks/gpu_check.py --stage bench      # one stage again (repeatable); machine (and import,
                                                       # when the stage needs the extension) run first
    python3 benchmarks/gpu_check.py --dry-run          # the CPU: see DRY below

Nothing is downloaded: a missing tool or test package skips what needs it, and the report says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
SELF = os.path.abspath(__file__)
WORKLOAD = os.path.join("benchmarks", "sanitizer_workload.py")
BEHAVIOUR = os.path.join("tests", "test_cuda_behaviour.py")
# Packages the test files import (a file that imports a missing one at its top is left out).
TEST_PACKAGES = ("pytest", "hypothesis", "scipy", "numpy", "pytest_benchmark", "matplotlib")
DRY = ("--dry-run: every stage runs its plumbing on the CPU (CUDA_VISIBLE_DEVICES is emptied): the build only "
       "configures setup.py, the pytest stages run their selections (the CUDA tests skip), the sanitizer stages run "
       "the workload without compute-sanitizer, the benchmark runs at 2^16 elements. A hidden first stage sleeps past "
       "its 2 s budget: it must be recorded as timed out with its process group gone, and the stages after it must "
       "run.")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    budget: float  # seconds
    what: str
    needs_extension: bool = True  # needs the built extension (and, unless a dry run, a GPU)


STAGES = [
    Stage("machine", 20, "the GPU, driver, torch, CUDA, nvcc, compute-sanitizer", needs_extension=False),
    Stage("build", 165, "the extension built in place against this machine's torch", needs_extension=False),
    Stage("import", 20, "the new build imports, has the CUDA kernels, sees the GPU", needs_extension=False),
    Stage("cuda-tests", 100, 'pytest tests -m "cuda and not slow": the CUDA op tests against the reference'),
    Stage("cuda-behaviour", 40, f"pytest {BEHAVIOUR}: CUDA graphs, no synchronisation, streams, a second GPU"),
    Stage("memcheck", 35, f"compute-sanitizer --tool memcheck over {WORKLOAD}"),
    Stage("racecheck", 30, f"compute-sanitizer --tool racecheck over {WORKLOAD}"),
    Stage("initcheck", 30, f"compute-sanitizer --tool initcheck over {WORKLOAD}"),
    Stage("bench", 30, "2^24 elements: anacuda, its eager peers and the copy limit"),
]
SELFTEST = Stage("selftest-timeout", 2, "dry run only: a stage that outlives its budget", needs_extension=False)
TOTAL_BUDGET = sum(s.budget for s in STAGES)
assert TOTAL_BUDGET <= 8 * 60, TOTAL_BUDGET
BY_NAME = {s.name: s for s in STAGES + [SELFTEST]}
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of a stage's process group


class Skip(Exception):
    """A stage that cannot run here; the message says why."""


class Interrupted(Exception):
    """The check itself got SIGTERM, SIGINT or SIGHUP."""


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def find_tool(name: str) -> Optional[str]:
    """A CUDA tool on PATH, in the toolkit of $CUDA_HOME or of nvcc, or in /usr/local/cuda."""
    found = shutil.which(name)
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in filter(None, homes):
        for path in (os.path.join(home, "bin", name), os.path.join(home, name, name)):
            if os.access(path, os.X_OK):
                return path
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _lines(text: str, n: int, width: int = 240) -> str:
    return "\n".join(line[:width] for line in text.rstrip().splitlines()[-n:])


def _shown(argv: List[str]) -> str:
    """A command as a reader would type it in the repository root."""
    return shlex.join(["python3" if a == PY else os.path.relpath(a, ROOT) if a.startswith(ROOT + os.sep) else a
                       for a in argv])


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)  # a reader never sees half a file


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not yet reaped
    except (OSError, IndexError):
        return False


def _kill_group(p: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- what each stage runs ------------------------------------------------------------------------
# A builder returns (argv, extra environment, note) or raises Skip. `details` is a json file the
# stage's child may write (machine facts, the import probe, benchmark rows).

def _child(mode: str, details: str, *args: str) -> List[str]:
    return [PY, SELF, "--child", mode, "--details", details, *args]


def build_machine(run, details):
    return _child("machine", details), {}, ""


def build_build(run, details):
    if run.dry:
        return [PY, "setup.py", "--name"], {}, "dry run: setup.py configures (its banner below), nothing is compiled"
    cap = (run.facts("machine").get("gpus") or [{}])[0].get("compute_cap")
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or cap or "9.0"
    env = {"MAX_JOBS": str(os.cpu_count() or 4), "TORCH_CUDA_ARCH_LIST": arch, "ANACUDA_WITH_CUDA": "1"}
    return ([PY, "setup.py", "build_ext", "--inplace"], env,
            f"MAX_JOBS={env['MAX_JOBS']}, TORCH_CUDA_ARCH_LIST={arch}; ninja keeps what it compiled: "
            "`--stage build` continues a build that ran out of time")


def build_import(run, details):
    return _child("import", details), {}, ""


def _missing_packages(run) -> List[str]:
    present = run.facts("import").get("packages", {})
    return [name for name in TEST_PACKAGES if present.get(name) is False]


def _pytest(run, targets: List[str], extra: List[str]):
    missing = _missing_packages(run)
    if "pytest" in missing:
        raise Skip("pytest is not installed on this machine")
    ignore, notes = [], []
    if missing:  # a test file that imports a missing package at its top is left out, and named
        pattern = re.compile(r"^(?:import|from)\s+(" + "|".join(missing) + r")\b", re.M)
        for path in sorted(glob.glob(os.path.join(ROOT, "tests", "test_*.py"))):
            with open(path) as f:
                hit = pattern.search(f.read())
            if hit:
                rel = os.path.relpath(path, ROOT)
                ignore.append(f"--ignore={rel}")
                notes.append(f"{rel} not run: it imports {hit.group(1)}, which is not installed")
    argv = [PY, "-m", "pytest", *targets, *extra, *ignore, "-v", "--tb=short", "--maxfail=100", "--durations=10",
            "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    return argv, {}, "; ".join(notes)


def build_cuda_tests(run, details):
    return _pytest(run, ["tests"], ["-m", "cuda and not slow", f"--ignore={BEHAVIOUR}"])


def build_cuda_behaviour(run, details):
    return _pytest(run, [BEHAVIOUR], ["-m", "cuda"])


def _sanitizer(tool_name: str):
    def build(run, details):
        tool = find_tool("compute-sanitizer")
        if run.dry and tool_name != "memcheck":
            raise Skip("dry run: the same CPU workload as the memcheck stage's")
        if run.dry:
            return ([PY, WORKLOAD, "--device", "cpu"], {},
                    f"dry run: the workload on the CPU without compute-sanitizer (here: {tool or 'not found'})")
        if tool is None:
            raise Skip("compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin, nvcc's toolkit)")
        # No caching allocator: every tensor is its own allocation, so an access past its end
        # is outside any allocation (memcheck) and no block looks initialised by an earlier
        # tensor (initcheck). Lazy module loading: only the kernels that run are instrumented.
        env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "CUDA_MODULE_LOADING": "LAZY"}
        return [tool, "--tool", tool_name, "--error-exitcode", "3", PY, WORKLOAD, "--device", "cuda"], env, ""
    return build


def build_bench(run, details):
    if run.dry:
        return _child("bench", details, "--device", "cpu", "--numel", str(1 << 16), "--repeat", "3"), {}, \
            "dry run: the CPU at 2^16 elements"
    return _child("bench", details, "--device", "cuda", "--numel", str(1 << 24)), {}, ""


def build_selftest(run, details):
    return _child("sleep", details), {}, "sleeps 120 s in a budget of 2 s, with a grandchild in its process group"


BUILDERS: Dict[str, Callable] = {
    "machine": build_machine, "build": build_build, "import": build_import, "cuda-tests": build_cuda_tests,
    "cuda-behaviour": build_cuda_behaviour, "memcheck": _sanitizer("memcheck"), "racecheck": _sanitizer("racecheck"),
    "initcheck": _sanitizer("initcheck"), "bench": build_bench, "selftest-timeout": build_selftest,
}


# --- what each stage's output means --------------------------------------------------------------
# A reader gets (record, log text) and sets record["summary"] (one line) and may add lines to
# record["findings"]; it may turn a passed stage into a failed one.

def read_machine(rec, log):
    f = rec.get("details") or {}
    gpus = f.get("gpus") or []
    gpu = "; ".join(f"{g.get('name')} (driver {g.get('driver_version')}, {g.get('memory_total')}, "
                    f"compute capability {g.get('compute_cap', '?')})" for g in gpus)
    gpu = gpu or f"no GPU ({f.get('nvidia_smi')})"
    rec["summary"] = f"{gpu}; torch {f.get('torch', '?')}, CUDA {f.get('torch_cuda', '?')}"
    rec["findings"] = [f"{k}: {v}" for k, v in f.items() if k != "gpus"]


def read_build(rec, log):
    steps = re.findall(r"^\[(\d+)/(\d+)\]", log, re.M)
    banner = re.findall(r"^anacuda build: .*$", log, re.M)
    done = f"ninja step {steps[-1][0]} of {steps[-1][1]}" if steps else "no ninja step"
    rec["summary"] = (banner[-1] if banner else "") + (f"; {done}" if rec["status"] != "passed" else "")
    so = glob.glob(os.path.join(ROOT, "anacuda", "_C*.so"))
    rec["findings"] = [f"extension: {os.path.relpath(p, ROOT)}, {time.ctime(os.path.getmtime(p))}" for p in so]


def read_import(rec, log):
    f = rec.get("details") or {}
    missing = [k for k, v in (f.get("packages") or {}).items() if not v]
    rec["summary"] = (f"cuda_available={f.get('cuda_available')}, devices={f.get('devices')}" if "build_info" in f
                      else f"anacuda did not import: {_lines(log, 1)}")
    rec["summary"] += f"; missing packages: {', '.join(missing) or 'none'}"
    rec["findings"] = [f"{k}: {v}" for k, v in f.items()]


def read_pytest(rec, log):
    counts = {}
    for line in reversed(log.splitlines()):
        if re.search(r"\bin [\d.]+s\b", line) and re.search(r"\d+ (passed|failed|skipped|deselected|error)", line):
            counts = {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", line)}
            break
    rec["counts"] = counts
    failed = [line for line in log.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    skipped = [line for line in log.splitlines() if line.startswith("SKIPPED [")]
    slowest = [line for line in log.splitlines() if re.match(r"^[\d.]+s (call|setup|teardown) ", line)]
    results = re.findall(r"^(tests/\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", log, re.M)
    rec["summary"] = ", ".join(f"{n} {k}" for k, n in counts.items()) or f"{len(results)} tests reported, no summary"
    rec["findings"] = failed[:30] + ([f"... {len(failed) - 30} more"] if len(failed) > 30 else [])
    rec["findings"] += skipped[:10] + slowest[:10]
    if rec["returncode"] == 5:
        rec["status"] = "failed"
        rec["summary"] = "no test selected: the selection matches nothing"
    if rec["status"] == "timed out":  # no closing summary: what the verbose lines say
        rec["findings"] = [f"FAILED {n}" for n, r in results if r in ("FAILED", "ERROR")][:30] + rec["findings"]
        started = re.findall(r"^(tests/\S+::\S+)\s*$", log, re.M)
        rec["summary"] = (f"killed after {len(results)} tests ({sum(r == 'PASSED' for _, r in results)} passed, "
                          f"{sum(r in ('FAILED', 'ERROR') for _, r in results)} failed)"
                          + (f"; running: {started[-1]}" if started else ""))


def read_sanitizer(rec, log):
    summaries = re.findall(r"^=+ .*SUMMARY.*$", log, re.M)
    # A report is a line "========= <what>" and its indented lines ("=========     at <kernel>", "by
    # thread ..."); distinct reports by what and where. "Program hit ...": a failed CUDA API call.
    reports, block = [], []
    for line in log.splitlines() + ["========= END"]:
        if not line.startswith("========="):
            continue
        if line.startswith("=========  "):
            block.append(line)
            continue
        if block and not re.search(r"COMPUTE-SANITIZER|SUMMARY", block[0]):
            key = "\n".join(re.sub(r"0x[0-9a-f]+|\(\d+,\d+,\d+\)", "#", b) for b in block[:2])
            if key not in (k for k, _ in reports):
                reports.append((key, "\n".join(block[:3])))
        block = [line]
    api = [r for _, r in reports if "Program hit" in r]
    reports = [r for _, r in reports]
    finished = "sanitizer_workload: all groups done" in log
    rec["summary"] = ("; ".join(s.strip("= ") for s in summaries) or "no sanitizer summary") \
        + ("" if finished else "; the workload did not finish") \
        + (f"; {len(reports) - len(api)} distinct access reports, {len(api)} failed API calls" if reports else "")
    if rec.get("dry_run"):
        rec["summary"] = "the workload ran on the CPU" if finished else "the workload did not finish"
    elif rec["status"] == "passed" and not (finished and summaries):
        rec["status"] = "failed"
    rec["findings"] = reports[:20] + ([f"... {len(reports) - 20} more"] if len(reports) > 20 else []) \
        + re.findall(r"^sanitizer_workload: .*$", log, re.M)


def read_bench(rec, log):
    f = rec.get("details") or {}
    rec["summary"] = f"{len(f.get('rows', []))} rows" + (f", errors: {f['errors']}" if f.get("errors") else "")
    if f.get("errors") and rec["status"] == "passed":
        rec["status"] = "failed"
    rec["markdown"] = f.get("markdown", "")


def read_selftest(rec, log):
    rec["summary"] = f"grandchild {((rec.get('details') or {}).get('grandchild'))}"


READERS: Dict[str, Callable] = {
    "machine": read_machine, "build": read_build, "import": read_import, "cuda-tests": read_pytest,
    "cuda-behaviour": read_pytest, "memcheck": read_sanitizer, "racecheck": read_sanitizer,
    "initcheck": read_sanitizer, "bench": read_bench, "selftest-timeout": read_selftest,
}


# --- the run -------------------------------------------------------------------------------------
class Run:
    def __init__(self, out: str, dry: bool):
        self.out, self.dry = out, dry
        self.records: Dict[str, dict] = {}
        os.makedirs(out, exist_ok=True)

    def path(self, name: str, ext: str) -> str:
        return os.path.join(self.out, f"{name}.{ext}")

    def facts(self, name: str) -> dict:
        rec = self.records.get(name) or _read_json(self.path(name, "json")) or {}
        return rec.get("details") or {}

    def clear(self):
        for name in list(BY_NAME) + ["summary"]:
            for ext in ("json", "md", "log", "details.json"):
                if os.path.exists(self.path(name, ext)):
                    os.remove(self.path(name, ext))

    def precondition(self, stage: Stage) -> None:
        if not stage.needs_extension:
            return
        imp = self.records.get("import")
        if imp is None or imp["status"] != "passed":
            raise Skip("the extension did not import (see the import stage)")
        if not self.dry and not imp["details"].get("cuda_available"):
            raise Skip("no GPU with the CUDA kernels: " + imp.get("summary", ""))

    def stage(self, stage: Stage, limit: float) -> dict:
        rec = dict(stage=stage.name, what=stage.what, status="running", budget_s=stage.budget,
                   limit_s=round(limit, 1), started=_now(), dry_run=self.dry)
        details = self.path(stage.name, "details.json")
        for ext in ("details.json", "log"):
            if os.path.exists(self.path(stage.name, ext)):
                os.remove(self.path(stage.name, ext))
        t0 = time.monotonic()
        try:
            self.precondition(stage)
            argv, env_extra, note = BUILDERS[stage.name](self, details)
        except Skip as why:
            rec.update(status="skipped", reason=str(why), seconds=0.0)
            return self.finish(stage, rec, "")
        except Exception as err:  # a bug here must not cost the stages after this one
            rec.update(status="failed", reason=f"gpu_check.py could not build the command: {err!r}", seconds=0.0)
            return self.finish(stage, rec, "")
        rec.update(command=_shown(argv), env=env_extra, note=note, log=os.path.basename(self.path(stage.name, "log")))
        self.save(stage, rec)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
        if self.dry:
            env["CUDA_VISIBLE_DEVICES"] = ""
        print(f"gpu-check: {stage.name} (budget {stage.budget:.0f} s, limit {limit:.0f} s): {rec['command']}",
              flush=True)
        with open(self.path(stage.name, "log"), "w") as log:
            log.write(f"$ {rec['command']}\n")
            log.flush()
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
            try:
                rc = p.wait(timeout=max(limit, 1.0))
                rec["status"] = "passed" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                _kill_group(p)
                rec["status"] = "timed out"
            except Interrupted as sig:
                _kill_group(p)
                rec.update(status="interrupted", reason=f"the check got {sig}")
                self.finish(stage, rec, self._log_text(stage), t0=t0, rc=p.returncode, details=details)
                raise
        return self.finish(stage, rec, self._log_text(stage), t0=t0, rc=p.returncode, details=details)

    def _log_text(self, stage) -> str:
        with open(self.path(stage.name, "log"), errors="replace") as f:
            return f.read()

    def finish(self, stage, rec, log, t0=None, rc=None, details=None) -> dict:
        rec["ended"] = _now()
        if t0 is not None:
            rec.update(seconds=round(time.monotonic() - t0, 1), returncode=rc, details=_read_json(details) or {})
        if rec.get("command"):
            try:
                READERS[stage.name](rec, log)
            except Exception as err:  # the log and the status are still recorded
                rec["summary"] = f"gpu_check.py could not read the output: {err!r}"
        rec["log_tail"] = _lines(log, 40 if rec["status"] != "passed" else 12)
        self.records[stage.name] = rec
        self.save(stage, rec)
        print(f"gpu-check: {stage.name} {rec['status']}"
              + (f" in {rec['seconds']:.0f} s" if rec.get("seconds") else "")
              + f": {rec.get('summary') or rec.get('reason', '')}", flush=True)
        return rec

    def save(self, stage, rec) -> None:
        _write_json(self.path(stage.name, "json"), rec)
        with open(self.path(stage.name, "md"), "w") as f:
            f.write(section(rec))
        self.write_summary()

    def write_summary(self) -> None:
        recs = [r for r in (_read_json(self.path(s.name, "json")) for s in [SELFTEST] + STAGES) if r]
        m = self.facts("machine")
        gpus = ", ".join(g.get("name", "?") for g in m.get("gpus") or []) or "no GPU"
        head = [f"# gpu-check{' (dry run)' if self.dry else ''}: {gpus}", "",
                f"torch {m.get('torch', '?')} (CUDA {m.get('torch_cuda', '?')}), nvcc {m.get('nvcc', '?')}, "
                f"{m.get('cores', '?')} cores, driver {((m.get('gpus') or [{}])[0]).get('driver_version', '?')}; "
                f"commit {m.get('commit', '?')}; written {_now()}.", "",
                f"Budgets add up to {TOTAL_BUDGET:.0f} s; a stage may use what earlier ones left. Each stage's "
                "output is in <stage>.log beside this file; a stage still 'running' here was killed with the run.", "",
                "| stage | status | seconds | budget (limit) | result |", "|---|---|---:|---:|---|"]
        for r in recs:
            result = (r.get("summary") or r.get("reason") or "").replace("|", "/")
            head.append(f"| {r['stage']} | {r['status']} | {r.get('seconds', '')} | {r['budget_s']:.0f} "
                        f"({r['limit_s']:.0f}) | {result[:200]} |")
        body = [section(r) for r in recs]
        with open(self.path("summary", "md") + ".tmp", "w") as f:
            f.write("\n".join(head) + "\n\n" + "\n".join(body))
        os.replace(self.path("summary", "md") + ".tmp", self.path("summary", "md"))


def section(rec: dict) -> str:
    out = [f"## {rec['stage']}: {rec['status']}" + (f" in {rec['seconds']} s" if rec.get("seconds") else "")
           + f" (budget {rec['budget_s']:.0f} s, limit {rec['limit_s']:.0f} s)", "", rec["what"] + ".", ""]
    for key in ("reason", "note", "summary"):
        if rec.get(key):
            out += [f"{key.capitalize()}: {rec[key]}", ""]
    if rec.get("command"):
        env = " ".join(f"{k}={v}" for k, v in (rec.get("env") or {}).items())
        out += [f"Command: `{(env + ' ') if env else ''}{rec['command']}`", ""]
    if rec.get("markdown"):
        out += [rec["markdown"], ""]
    if rec.get("findings"):
        out += ["```", *[str(x)[:300] for x in rec["findings"]], "```", ""]
    if rec.get("log_tail"):
        out += [f"Last lines of {rec.get('log')}:", "```", rec["log_tail"], "```", ""]
    return "\n".join(out) + "\n"


def select(names: Optional[List[str]], dry: bool) -> List[Stage]:
    if not names:
        return ([SELFTEST] if dry else []) + STAGES
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        sys.exit(f"gpu-check: unknown stage {unknown}; stages: {', '.join(s.name for s in STAGES)}")
    chosen = {"machine"} | set(names)
    if any(BY_NAME[n].needs_extension for n in names):
        chosen.add("import")
    return [s for s in [SELFTEST] + STAGES if s.name in chosen]


def check_plumbing(run: Run, stages: List[Stage]) -> List[str]:
    """The dry run's own test: the self-test stage timed out, its process group is gone, and
    every stage after it ended with a result on disk."""
    problems = []
    st = run.records.get(SELFTEST.name)
    if st is not None:
        if st["status"] != "timed out":
            problems.append(f"the self-test stage should have timed out, got {st['status']}")
        pid = (st.get("details") or {}).get("grandchild")
        deadline = time.monotonic() + 5
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not pid or _alive(pid):
            problems.append(f"the self-test's grandchild {pid} outlived the kill of its process group")
    for s in stages:
        rec = _read_json(run.path(s.name, "json"))
        if rec is None or rec["status"] in ("running", "interrupted"):
            problems.append(f"{s.name}: no final result in {run.path(s.name, 'json')}")
        elif rec["status"] in ("failed", "timed out") and s is not SELFTEST:
            problems.append(f"{s.name}: {rec['status']}: {rec.get('summary', '')}")
        if not os.path.exists(run.path(s.name, "md")):
            problems.append(f"{s.name}: no {run.path(s.name, 'md')}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=DRY)
    p.add_argument("--out", help="results folder (default: benchmarks/results/gpu-check; dry run: "
                                 "build/gpu-check-dry-run)")
    p.add_argument("--stage", action="append", help="run this stage (repeatable); default: all")
    p.add_argument("--dry-run", action="store_true", help="the plumbing on the CPU in seconds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--details", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--numel", type=int, default=1 << 24, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=10, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return CHILDREN[args.child](args)

    # The dry run writes under build/ (ignored by git): it must not overwrite a GPU run's results.
    out = os.path.abspath(args.out or (os.path.join(ROOT, "build", "gpu-check-dry-run") if args.dry_run
                                       else os.path.join(ROOT, "benchmarks", "results", "gpu-check")))
    run = Run(out, args.dry_run)
    stages = select(args.stage, args.dry_run)
    if not args.stage:
        run.clear()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    print(f"gpu-check{' --dry-run' if args.dry_run else ''}: stages {', '.join(s.name for s in stages)}; "
          f"budgets {sum(s.budget for s in stages):.0f} s; results in {out}", flush=True)
    start = time.monotonic()
    allowed = 0.0
    try:
        for s in stages:
            allowed += s.budget
            run.stage(s, allowed - (time.monotonic() - start))
    except Interrupted as sig:
        print(f"gpu-check: interrupted by {sig}; results so far in {out}", flush=True)
        return 128 + getattr(signal, str(sig)).value
    total = time.monotonic() - start
    print(f"\ngpu-check: done in {total:.0f} s (budgets {sum(s.budget for s in stages):.0f} s); "
          f"report: {run.path('summary', 'md')}", flush=True)
    if args.dry_run:
        problems = check_plumbing(run, stages)
        for line in problems:
            print(f"gpu-check --dry-run: PROBLEM: {line}", flush=True)
        return 1 if problems else 0
    # On the GPU a skipped stage is a check that did not happen: not a pass.
    bad = [f"{s.name} ({run.records[s.name]['status']})" for s in stages if run.records[s.name]["status"] != "passed"]
    if bad:
        print(f"gpu-check: not passed: {', '.join(bad)}", flush=True)
    return 1 if bad else 0


# --- the stages' own children (python3 gpu_check.py --child NAME --details FILE) -------------------
def child_machine(args) -> int:
    facts = {"host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version()}

    def save(**kw):
        facts.update(kw)
        _write_json(args.details, facts)
        for k, v in kw.items():
            print(f"machine: {k}: {v}", flush=True)

    def run(cmd, timeout=15):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    save(**facts)
    smi = shutil.which("nvidia-smi")
    fields = ["name", "driver_version", "memory.total", "compute_cap"]
    text = None
    if smi:
        # compute_cap is a recent field: ask without it when an older driver refuses it.
        for f in (fields, fields[:-1]):
            text = run([smi, f"--query-gpu={','.join(f)}", "--format=csv,noheader"])
            if text is not None:
                break
        if text is not None:
            gpus = [dict(zip([k.replace(".", "_") for k in f], (v.strip() for v in line.split(","))))
                    for line in text.splitlines() if line.strip()]
            save(gpus=gpus)
    if text is None:
        save(gpus=[], nvidia_smi="nvidia-smi not found" if smi is None else "nvidia-smi failed")
    nvcc = find_tool("nvcc")
    out = run([nvcc, "--version"]) if nvcc else None
    m = re.search(r"release ([\d.]+)", out or "")
    save(nvcc=m.group(1) if m else f"not found ({nvcc or 'no nvcc'})")
    tool = find_tool("compute-sanitizer")
    version = run([tool, "--version"]) if tool else None
    save(compute_sanitizer=f"{tool}: {_lines(version, 1)}" if version else (tool or "not found"))
    commit = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], 5)
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], 5)
    save(commit=(commit + (" (with uncommitted changes)" if dirty else "")) if commit else "unknown (no git)")
    # torch's version file, not torch itself: importing torch takes seconds (the import stage does).
    spec = importlib.util.find_spec("torch")
    try:
        with open(os.path.join(spec.submodule_search_locations[0], "version.py")) as f:
            text = f.read()
        found = {k: re.search(rf"^{k}\b[^=\n]*=\s*['\"]([^'\"]+)['\"]", text, re.M) for k in ("__version__", "cuda")}
        save(torch=found["__version__"].group(1) if found["__version__"] else "?",
             torch_cuda=found["cuda"].group(1) if found["cuda"] else "none (a CPU build)")
    except (AttributeError, TypeError, IndexError, OSError):
        save(torch="not found")
    return 0


def child_import(args) -> int:
    facts = {"packages": {name: importlib.util.find_spec(name) is not None for name in TEST_PACKAGES}}
    _write_json(args.details, facts)
    sys.path.insert(0, ROOT)
    import torch

    import anacuda

    facts.update(build_info=anacuda.build_info(), cuda_available=anacuda.cuda_available(),
                 devices=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    _write_json(args.details, facts)
    print(json.dumps(facts, indent=1), flush=True)
    return 0


def child_bench(args) -> int:
    sys.path[:0] = [HERE, ROOT]
    import run as bench  # benchmarks/run.py: the timing, the table and the targets of `make bench`
    import workloads

    # The torch.compile rows are not run here: their wrappers need not be built (importing
    # Dynamo alone takes seconds).
    workloads.compiled = lambda fn: None
    rows, errors = [], []
    for w in workloads.workloads(args.numel):
        # the eager peers of each target (the learnable fake-quantisers of W6, BitNet's W7)
        impls = {k: f for k, f in w.impls.items() if k in ("anacuda", "fake_quantize", "pytorch_learnable", "bitnet")}
        # One failure must not hide the other figures: without fake_quantize, then without the workload.
        for keep in ([impls, {"anacuda": impls["anacuda"]}] if len(impls) > 1 else [impls]):
            try:
                rows += bench.bench_workload(dataclasses.replace(w, impls=keep), args.device, args.repeat,
                                             budget=1.0, warm_s=0.1)
                break
            except Exception as err:
                errors.append(f"{w.name} ({', '.join(keep)}): {type(err).__name__}: {err}")
                print(f"  {errors[-1]}", flush=True)
        text = bench.table(rows) if rows else ""
        goals = bench.targets(rows, args.device) if rows else ""
        md = (f"Machine: {bench.machine(args.device)}; {args.numel} elements (W4: a (256, 256, 3, 3) weight).\n\n"
              f"{text}\n\nTargets:\n{goals}\n")
        _write_json(args.details, dict(rows=rows, errors=errors, markdown=md))
    print(md, flush=True)
    return 0


def child_sleep(args) -> int:
    grandchild = subprocess.Popen([PY, "-c", "import time; time.sleep(120)"])
    _write_json(args.details, {"grandchild": grandchild.pid})
    print(f"selftest: sleeping, grandchild {grandchild.pid}", flush=True)
    time.sleep(120)
    return 0


CHILDREN = {"machine": child_machine, "import": child_import, "bench": child_bench, "sleep": child_sleep}

if __name__ == "__main__":
    sys.exit(main())
