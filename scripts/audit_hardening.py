"""Issue #28's audit, repeatable: every case of its sections 1-6 tried as an attacker or a new user would.

    .venv/bin/python scripts/audit_hardening.py [--json FILE] [--work DIR] [--only TEXT] [--jobs N]

Builds tiny models (tests/tiny.py: a 32-pixel ViT, a 64-position BERT), exports them with the CLI
(ONNX, TFLite), then runs each case, nearly all through the ``sttabt-edge`` executable as a user
would, and checks the outcome: one ``error:`` line on stderr, nothing on stdout, exit status 2
(and nothing written or touched), or a correct result (a wrong file fails ``verify``, threads get
their own answers, a missing output folder is created, no third-party noise). Prints a table and
writes a JSON summary: cases, held, failed, the commit and every case with its detail and time.
Exit status 1 if a case failed. About 6 minutes on 2 busy cores, 2 cases at a time (the cases that must succeed
run whole commands; everything refused is refused in about a second).

Read-only folders: as root (whom permission bits do not stop) a folder made immutable with
``chattr +i`` (undone at the end), else a ``chmod 555`` one. The cases live in
``audit_cases_model.py`` (sections 1-3: the seal and metadata checks, threads, verify),
``audit_cases_cli.py`` (sections 4-5: outputs, values, inputs, noise) and ``audit_cases_more.py``
(files that are not what they claim, damaged weights, section 6, and #28's leftovers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny.py, handmade.py: the tests' tiny models and images
EXE = Path(sys.executable).with_name("sttabt-edge")
RESULT = ROOT / "benchmarks" / "results" / "audit_hardening.json"
GNU_TIME = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


@dataclass
class Run:
    """One finished command: exit status, stdout, stderr, wall seconds, peak RSS (MB, if measured)."""

    rc: int
    out: str
    err: str
    seconds: float
    rss_mb: float | None = None


@dataclass
class Outcome:
    held: bool
    detail: str


@dataclass
class Result:
    section: str
    case: str
    held: bool
    detail: str
    seconds: float


def cli(*args: object, timeout: float = 900, cwd: Path | None = None) -> Run:
    """``sttabt-edge ARGS`` in a fresh process (under GNU time for its peak RSS, when installed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("STTABT_VERBOSE", "FORCE_COLOR")}
    env.update(COLUMNS="100", NO_COLOR="1")
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss:
        cmd = [str(EXE), *map(str, args)]
        if GNU_TIME:
            cmd = [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd]
        start = time.perf_counter()
        p = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=timeout, env=env, cwd=cwd
        )
        seconds = time.perf_counter() - start
        lines = Path(rss.name).read_text().split()
    return Run(p.returncode, p.stdout, p.stderr, seconds, int(lines[-1]) / 1024 if lines else None)


def refused(run: Run, needle: str = "", max_s: float | None = 5.0) -> Outcome:
    """One ``error:`` line on stderr, nothing on stdout, exit 2, no traceback; ``needle`` in the line;
    within ``max_s`` seconds (up front: before the model or torch loads)."""
    lines = [ln for ln in run.err.splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    problems = []
    if run.rc != 2:
        problems.append(f"exit {run.rc}")
    if len(lines) != 1 or not first.startswith("error: "):
        problems.append(f"{len(lines)} stderr lines" + (f", last {lines[-1][:80]!r}" if lines else ""))
    if "Traceback" in run.err:
        problems.append("a traceback")
    if run.out.strip():
        problems.append(f"stdout {run.out.strip()[:60]!r}")
    if needle and needle not in first:
        problems.append(f"the message lacks {needle!r}")
    if max_s is not None and run.seconds > max_s:
        problems.append(f"{run.seconds:.1f} s (> {max_s:g} s: not up front)")
    return Outcome(not problems, "; ".join([*problems, first[:150]]))


def succeeded(run: Run, quiet: bool = False, check: Callable[[], str | None] | None = None) -> Outcome:
    """Exit 0, no traceback; ``quiet``: nothing at all on stderr; ``check``: None or a problem."""
    problems = [f"exit {run.rc}"] if run.rc != 0 else []
    if "Traceback" in run.err:
        problems.append("a traceback")
    if quiet and run.err.strip():
        problems.append(f"stderr {run.err.strip()[:120]!r}")
    if run.rc == 0 and check is not None and (problem := check()):
        problems.append(problem)
    tail = (run.err.strip().splitlines() or [""])[-1][:120] if problems else f"{run.seconds:.1f} s"
    return Outcome(not problems, "; ".join([*problems, tail]))


def exited(run: Run, rc: int, needle: str = "") -> Outcome:
    """Exit ``rc`` (verify: 1 = the file is off), with ``needle`` in the output, no traceback."""
    text = run.out + run.err
    problems = [f"exit {run.rc}, expected {rc}"] if run.rc != rc else []
    if "Traceback" in text:
        problems.append("a traceback")
    if needle and needle not in text:
        problems.append(f"no {needle!r} in the output")
    return Outcome(not problems, "; ".join([*problems, (text.strip().splitlines() or [""])[-1][:150]]))


@dataclass
class Ctx:
    """The audit's folder, tiny models, data and exports (see :func:`setup`)."""

    work: Path
    vit: Path  # model dirs (save_pretrained)
    bert: Path
    imgs: Path  # image folder (classes a/, b/)
    sst2: Path  # GLUE SST-2 folder
    ok_png: Path
    exports: dict[str, Path] = field(default_factory=dict)  # vit.onnx, bert.onnx, vit.tflite
    readonly: Path | None = None
    _count: Iterator[int] = field(
        default_factory=lambda: itertools.count(1)
    )  # next() is atomic: cases run in threads

    @property
    def dev(self) -> Path:
        return self.sst2 / "dev.tsv"

    def fresh(self, name: str) -> Path:
        d = self.work / "cases" / f"{next(self._count):03d}-{name.replace(' ', '_').replace('/', '_')[:40]}"
        d.mkdir(parents=True)
        return d

    def args(self, template: str, **extra: object) -> list[str]:
        """``template``'s words with {vit} {bert} {imgs} {dev} {train_tsv} {sst2} {ok_png} {work}
        {vit_onnx} {bert_onnx} {vit_tflite} {tokenizer} and ``extra`` filled in (no word holds a space)."""
        names = {
            "vit": self.vit,
            "bert": self.bert,
            "imgs": self.imgs,
            "dev": self.dev,
            "train_tsv": self.sst2 / "train.tsv",
            "sst2": self.sst2,
            "ok_png": self.ok_png,
            "work": self.work,
            "tokenizer": self.exports["bert.onnx"].with_name("bert.tokenizer.json"),
            **{k.replace(".", "_"): v for k, v in self.exports.items()},
            **extra,
        }
        return [word.format(**names) for word in template.split()]

    def copy_export(self, key: str, name: str) -> Path:
        """A copy of an export's folder (the file and its companions) for a case to edit."""
        src = self.exports[key]
        d = self.fresh(name)
        for f in src.parent.iterdir():
            shutil.copy(f, d / f.name)
        return d / src.name


def setup(work: Path) -> Ctx:
    """Tiny models and data (tests/tiny.py) and their CLI exports; a read-only folder."""
    import numpy as np
    from PIL import Image
    from tiny import WORDS, save_tiny_text_model, tiny_vit, write_image_dir, write_sst2_dir

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    ctx = Ctx(work, work / "vit", work / "bert", work / "imgs", work / "SST-2", work / "ok.png")
    tiny_vit().save_pretrained(ctx.vit)
    save_tiny_text_model(ctx.bert, WORDS)
    write_image_dir(ctx.imgs, per_class=12)
    write_sst2_dir(ctx.sst2, n_train=24, n_dev=8, seed=0)
    (work / "approx").mkdir()  # a folder the CLI takes for an ApproxNet (its checks come first)
    (work / "approx" / "approxnet.json").write_text("{}")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(ctx.ok_png)
    fast = ["--method", "dense", "--calib-samples", "4", "--latency-runs", "0", "--no-simplify"]
    jobs = {
        "vit.onnx": [ctx.vit, ctx.imgs],
        "bert.onnx": [ctx.bert, ctx.dev],
        "vit.tflite": [ctx.vit, ctx.imgs, "--target", "tflite"],
    }
    outs = {key: work / "exports" / key.replace(".", "_") / key for key in jobs}

    def export(key: str) -> Run:
        model, calib, *extra = jobs[key]
        return cli("export", "--model", model, "--out", outs[key], "--calib", calib, *fast, *extra)

    with ThreadPoolExecutor(len(jobs)) as pool:  # three processes at once: the setup's longest part
        runs = dict(zip(jobs, pool.map(export, jobs), strict=True))
    for key, run in runs.items():
        if run.rc != 0:
            raise SystemExit(f"setup: exporting {key} failed:\n{run.err[-2000:]}")
    ctx.exports = outs
    ctx.readonly = work / "readonly"
    ctx.readonly.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(ctx.readonly)], capture_output=True).returncode != 0:
            ctx.readonly = None  # no way to make a folder read-only for root here: those cases say so
    else:
        ctx.readonly.chmod(0o555)
    return ctx


def teardown(ctx: Ctx) -> None:
    if ctx.readonly is not None and os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(ctx.readonly)], capture_output=True)
    elif ctx.readonly is not None:
        ctx.readonly.chmod(0o755)


def commit() -> str:
    p = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    return p.stdout.strip() + (" (working tree differs)" if dirty.stdout.strip() else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", type=Path, default=RESULT, help=f"summary file (default: {RESULT.relative_to(ROOT)})"
    )
    parser.add_argument("--work", type=Path, help="folder for models and cases (default: a temp folder)")
    parser.add_argument("--only", default="", help="run only the cases whose section or name contains this")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default: 2)")
    args = parser.parse_args()
    import audit_cases_cli
    import audit_cases_model
    import audit_cases_more

    cases = [*audit_cases_model.CASES, *audit_cases_cli.CASES, *audit_cases_more.CASES]
    cases = [c for c in cases if args.only.lower() in f"{c[0]} {c[1]}".lower()]
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="sttabt-audit-"))
    work.mkdir(parents=True, exist_ok=True)
    t0, audited = time.perf_counter(), commit()  # the code as the audit starts (others may commit meanwhile)
    ctx = setup(work)
    print(f"setup: {time.perf_counter() - t0:.0f} s in {work}", flush=True)

    def one(case: tuple[str, str, Callable[[Ctx], Outcome]]) -> Result:
        section, name, fn = case
        start = time.perf_counter()
        try:
            outcome = fn(ctx)
        except Exception as e:  # the audit's own failure is a failed case, never a silent pass
            outcome = Outcome(False, f"audit error: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
        r = Result(section, name, outcome.held, outcome.detail, time.perf_counter() - start)
        mark = "held " if r.held else "FAIL "
        print(f"{mark} {r.seconds:6.1f}s  {section:<9} {name:<58} {r.detail[:90]}", flush=True)
        return r

    try:  # the cases are independent (each edits its own copies): --jobs at a time, results in order
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(one, cases))
    finally:
        teardown(ctx)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    held = sum(r.held for r in results)
    summary = {
        "cases": len(results),
        "held": held,
        "failed": len(results) - held,
        "commit": audited,
        "seconds": round(time.perf_counter() - t0, 1),
        "results": [asdict(r) for r in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"\n{len(results)} cases, {held} held, {len(results) - held} failed ({summary['seconds']:.0f} s); {args.json}"
    )
    for r in results:
        if not r.held:
            print(f"  FAILED [{r.section}] {r.case}: {r.detail}")
    return 0 if held == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
