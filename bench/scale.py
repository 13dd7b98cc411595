"""Growth: the pipeline's stages at 10k, 100k and 1M subscribers, each size in a fresh process.

Per size: generate an operator (DAYS days, not timed; in its own process, kept in bench/.cache
for the next run), then, in a fresh process on a fresh lake, time each stage on its own:
ingest (landing -> bronze -> silver, every source), identity (the first, full build), gold full
(the first `refresh_gold`: every profile) and gold incremental (a landing file of network events
for 1% of the subscribers, ingested and resolved untimed, then `refresh_gold` timed). Baseline in
the same process: the plain job `spark.read.json(landing/<source>).write.format("delta")` on the
same files. RSS of the driver's Python process and of its JVM (in local mode the JVM also runs
the executors' tasks) is sampled every 0.2 s; each stage reports its peak.

Prints one JSON line: per size and stage the seconds and peak RSS, and per stage the growth
exponent between consecutive sizes (log of the time ratio over log of the size ratio; 1.0 is
linear). Writes docs/scale.svg (time per stage against size, log-log).

Run: .venv/bin/python bench/scale.py   (no arguments: 10k, 100k, 1M; hours on 2 cores)
     .venv/bin/python bench/scale.py --sizes 2000,10000   (a quick check)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = (10_000, 100_000, 1_000_000)
DAYS = 3
TOUCHED_SHARE = 0.01  # gold incremental: events of this share of the subscribers
STAGES = ("baseline", "ingest", "identity", "gold_full", "gold_incremental")
PLOT = Path(__file__).resolve().parent.parent / "docs" / "scale.svg"
CACHE = Path(__file__).resolve().parent / ".cache" / "scale"  # generated operators, git-ignored
DONE = "generated.json"


def step(msg: str) -> None:
    print(f"[bench/scale] {msg}", file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    """Resident memory of a process now, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Peaks:
    """Samples the RSS of the given processes in a thread; `stage` records each stage's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.current = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for name, pid in self.pids.items():
                self.current[name] = max(self.current[name], rss_mb(pid))

    @contextmanager
    def stage(self, out: dict[str, Any], name: str) -> Iterator[None]:
        self.current = {k: rss_mb(p) for k, p in self.pids.items()}
        started = time.perf_counter()
        yield
        out[f"{name}_s"] = round(time.perf_counter() - started, 2)
        for proc, peak in self.current.items():
            out[f"{name}_{proc}_peak_rss_mb"] = round(peak)
        step(f"{name}: {out[f'{name}_s']} s, peak RSS {self.current}")

    def stop(self) -> None:
        self._stop.set()


def touched_file(landing: Path, share: float, out: Path) -> int:
    """A landing file of network events of `share` of the numbers, copied with new event ids
    (same days: the clock does not move, so gold refreshes incrementally); its line count."""
    rng = random.Random(7)
    chosen: dict[str, bool] = {}
    lines = []
    for path in sorted(landing.glob("*.jsonl")):
        for raw in path.read_text().splitlines():
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                continue
            msisdn = event.get("msisdn") if isinstance(event, dict) else None
            if not isinstance(msisdn, str):
                continue
            if msisdn not in chosen:
                chosen[msisdn] = rng.random() < share
            if chosen[msisdn]:
                event["event_id"] = f"scale-{len(lines)}-{event.get('event_id')}"
                lines.append(json.dumps(event))
    out.write_text("\n".join(lines) + "\n")
    return len(lines)


def generated(subscribers: int) -> Path:
    """The operator of this size, generated once (in its own process, so the stages' process
    starts with a clean heap) and kept in bench/.cache: ~40 minutes at 1M subscribers."""
    folder = CACHE / f"{subscribers}-{DAYS}d"
    if (folder / DONE).exists():
        step(f"{subscribers:,} subscribers: generated before, in {folder}")
        return folder
    step(f"{subscribers:,} subscribers: generating into {folder} (not timed)")
    subprocess.run([sys.executable, __file__, "--generate", str(subscribers)], check=True)
    return folder


def generate_size(subscribers: int) -> None:
    """Generate the operator of this size into its cache folder, marking it done at the end."""
    from pipelines.config import PROJECT_ROOT, load_settings
    from pipelines.synthetic.operator import generate

    folder = CACHE / f"{subscribers}-{DAYS}d"
    shutil.rmtree(folder, ignore_errors=True)
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(folder)})
    files = max(2, subscribers // 25_000)
    cfg = settings.generator.model_copy(
        update={"subscribers": subscribers, "days": DAYS, "files_per_source": files}
    )
    t = time.perf_counter()
    summary = generate(
        cfg, settings.identity.country, settings.paths.landing_root, settings.paths.truth_root
    )
    seconds = time.perf_counter() - t
    step(f"{subscribers:,} subscribers: {summary.events:,} lines in {seconds:.0f} s")
    (folder / DONE).write_text(json.dumps({"events": summary.events}))


def one_size(subscribers: int) -> dict[str, Any]:
    """Every stage at one size, in this process (the parent starts one process per size)."""
    from pipelines.config import PROJECT_ROOT, load_settings
    from pipelines.identity.stage import refresh_identity
    from pipelines.ingest.reference import load_reference
    from pipelines.ingest.stream import Ingestion
    from pipelines.lakehouse.lake import Lake
    from pipelines.lakehouse.spark import spark_session
    from pipelines.profile.stage import refresh_gold

    root = Path(tempfile.mkdtemp(prefix=f"cdp-bench-scale-{subscribers}-"))
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(root)})
    generated = CACHE / f"{subscribers}-{DAYS}d"
    events = json.loads((generated / DONE).read_text())["events"]
    for folder in ("landing", "truth"):  # hard links: a fresh root without copying gigabytes
        shutil.copytree(generated / folder, root / folder, copy_function=os.link)
    spark = spark_session(settings.engine, app_name="bench-scale")
    spark.range(1000).count()  # executors up before timing
    jvm_pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())  # type: ignore[union-attr]
    peaks = Peaks({"python": os.getpid(), "jvm": jvm_pid})
    out: dict[str, Any] = {"subscribers": subscribers, "events": events}
    lake = Lake(settings.paths.lake_root, spark)
    landing = settings.paths.landing_root
    with peaks.stage(out, "baseline"):
        for source in settings.sources:
            target = root / "plain" / source
            spark.read.json(str(landing / source)).write.format("delta").save(str(target))
    load_reference(lake, settings.reference, landing / "reference")
    with peaks.stage(out, "ingest"):
        Ingestion(spark, settings, lake).run()
    with peaks.stage(out, "identity"):
        out["identity_mode"] = refresh_identity(spark, lake, settings).mode
    with peaks.stage(out, "gold_full"):
        result = refresh_gold(lake, settings)
        out["gold_full_mode"], out["persons"] = result.mode, result.persons
    out["touched_events"] = touched_file(
        landing / "network", TOUCHED_SHARE, landing / "network" / "zz-touched.jsonl"
    )
    Ingestion(spark, settings, lake).run(["network"])
    refresh_identity(spark, lake, settings)
    with peaks.stage(out, "gold_incremental"):
        result = refresh_gold(lake, settings)
        out["gold_incremental_mode"], out["touched_persons"] = result.mode, result.persons
    peaks.stop()
    spark.stop()
    shutil.rmtree(root, ignore_errors=True)
    return out


def exponents(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Per stage, between consecutive sizes: log(time ratio) / log(input ratio)."""
    out: dict[str, float] = {}
    for a, b in itertools.pairwise(runs):
        grow = math.log(b["events"] / a["events"])
        for stage in STAGES:
            ta, tb = a[f"{stage}_s"], b[f"{stage}_s"]
            key = f"{stage}_exponent_{a['subscribers']}_{b['subscribers']}"
            out[key] = round(math.log(tb / ta) / grow, 2) if ta > 0 and tb > 0 else math.nan
    return out


def svg(runs: list[dict[str, Any]], path: Path) -> None:
    """Seconds per stage against subscribers, both axes logarithmic, as a small SVG."""
    w, h, pad, legend = 760, 400, 60, 170
    xs = [math.log10(r["subscribers"]) for r in runs]
    ys = [math.log10(max(r[f"{s}_s"], 0.1)) for r in runs for s in STAGES]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def px(x: float, y: float) -> str:
        return (
            f"{pad + (x - x0) / (x1 - x0) * (w - pad - legend):.1f},"
            f"{h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad):.1f}"
        )

    colours = ["#888", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{pad}" y="20">seconds per stage vs subscribers (log-log), bench/scale.py</text>',
    ]
    for r, x in zip(runs, xs, strict=True):
        parts.append(
            f'<text x="{px(x, y0).split(",")[0]}" y="{h - pad + 20}">{r["subscribers"]:,}</text>'
        )
    for i, stage in enumerate(STAGES):
        points = " ".join(
            px(x, math.log10(max(r[f"{stage}_s"], 0.1))) for r, x in zip(runs, xs, strict=True)
        )
        parts.append(
            f'<polyline fill="none" stroke="{colours[i]}" stroke-width="2" points="{points}"/>'
        )
        last = runs[-1][f"{stage}_s"]
        label_x, label_y = w - legend + 10, px(xs[-1], math.log10(max(last, 0.1))).split(",")[1]
        parts.append(
            f'<text x="{label_x}" y="{label_y}" fill="{colours[i]}">{stage} {last:.0f}s</text>'
        )
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="comma-separated subscriber counts (default 10k,100k,1M)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size, in this process
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)  # into the cache
    args = parser.parse_args()
    if args.generate:
        generate_size(args.generate)
        return
    if args.one:
        print(json.dumps(one_size(args.one)), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SIZES)
    runs = []
    for n in sizes:
        generated(n)
        step(f"size {n:,}: a fresh process")
        done = subprocess.run(  # its progress goes straight to stderr
            [sys.executable, __file__, "--one", str(n)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if done.returncode:
            raise SystemExit(f"size {n} failed (exit {done.returncode})")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if len(runs) > 1:
        svg(runs, PLOT)
    print(json.dumps({"runs": runs, **exponents(runs)}))


if __name__ == "__main__":
    main()
