"""The report: summary.md, charts, and merging results brought back from several calls."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpubench.configs import COLLAPSE_TOLERANCE, TARGETS
from gpubench.machine import run_text

# Charts are drawn by the CLI in a child process (see plot_all).
CLI = Path(__file__).resolve().parent.parent / "run_gpu_bench.py"
OUT_FILES = ("summary.md", "results.tar.gz", "throughput.png", "latency_p90.png", "machine.txt")


@dataclass(frozen=True)
class Curve:
    concurrency: list[int]
    images_per_s: list[float]
    p50_ms: list[float]
    p90_ms: list[float]


def curves(meta: dict[str, Any]) -> tuple[Curve, Curve]:
    ours = Curve([], [], [], [])
    theirs = Curve([], [], [], [])
    for point in meta.get("points", []):
        if point.get("ours"):
            ours.concurrency.append(point["concurrency"])
            ours.images_per_s.append(point["ours"]["images_per_s"])
            ours.p50_ms.append(point["ours"]["p50_ms"])
            ours.p90_ms.append(point["ours"]["p90_ms"])
        row = point.get("perf_analyzer")
        if row:
            theirs.concurrency.append(int(row["Concurrency"]))
            theirs.images_per_s.append(float(row["Inferences/Second"]))
            theirs.p50_ms.append(_number(row.get("p50 latency")) / 1000)
            theirs.p90_ms.append(_number(row.get("p90 latency")) / 1000)
    return ours, theirs


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def budget_figures(curve: Curve, budget_ms: float) -> tuple[int | None, float | None]:
    """(highest concurrency whose p90 is within the budget, best throughput among those points)."""
    within = [
        (c, t)
        for c, t, p in zip(curve.concurrency, curve.images_per_s, curve.p90_ms, strict=True)
        if not math.isnan(p) and p <= budget_ms
    ]
    if not within:
        return None, None
    return max(c for c, _ in within), max(t for _, t in within)


def largest_fall(curve: Curve) -> tuple[float, int | None]:
    """The largest fall of throughput below the best seen at lower concurrency: (fraction, c)."""
    best, worst, where = 0.0, 0.0, None
    for c, t in zip(curve.concurrency, curve.images_per_s, strict=True):
        if best > 0 and (best - t) / best > worst:
            worst, where = (best - t) / best, c
        best = max(best, t)
    return worst, where


def _within(concurrency: int | None, curve: Curve) -> str:
    """The highest concurrency within the budget; says so when the sweep ended before the
    budget was reached (then the throughput at budget is a lower bound)."""
    if concurrency is None:
        return "none"
    if curve.concurrency and concurrency == max(curve.concurrency):
        return f"{concurrency} (top of the sweep)"
    return str(concurrency)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def summary_markdown(
    metas: dict[str, dict[str, Any]], plan_text: str, machine: str, budget_ms: float
) -> str:
    lines = ["# ResNet-50 FP16 on one GPU: Triton instances behind Envoy", ""]
    lines += [
        "Several Triton instances on one GPU here are **NOT MIG**: they are processes sharing one "
        "GPU through CUDA MPS (each limited to a share of the SMs), the stand-in for MIG slices. "
        "Every chart says so.",
        "",
        f"Latency budget: p90 <= {budget_ms:g} ms, measured end to end through Envoy "
        "(except the configurations marked 'direct, no Envoy: diagnostic', which talk to "
        "Triton's own gRPC port to show what Envoy costs). 'UINT8 input': the model takes raw "
        "pixels (1 byte each instead of FP32's 4) and scales them on the GPU.",
        "",
    ]
    weights = {m.get("weights", "") for m in metas.values()}
    lines.append(
        f"Weights: {', '.join(sorted(w for w in weights if w)) or 'random'} (timing does not depend on them)."
    )
    loads = {m.get("load_description", "") for m in metas.values() if m.get("load_description")}
    for text in sorted(loads):
        lines.append(f"Load: {text}.")
    lines.append("")
    lines += ["## Per configuration (our engine; perf_analyzer in brackets)", ""]
    lines.append(
        "| configuration | status | stack ready | peak img/s | highest c with p90 <= budget | img/s at budget | scaling vs 1 MPS instance | largest fall | p50 at c=1 (ms) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")

    def variant_of(name: str) -> str:
        """'-u8', '-direct'...: what follows the base name (mps7-u8 scales against mps1-u8)."""
        match = re.fullmatch(r"(?:whole|mps\d+|cpu)(?:x\d+)?(.*)", name)
        return match.group(1) if match else ""

    base_budgets = {
        variant_of(name): budget_figures(curves(metas[name])[0], budget_ms)[1]
        for name in metas
        if re.fullmatch(r"mps1(-.*)?", name)
    }
    figures: dict[str, dict[str, Any]] = {}
    for name, meta in metas.items():
        ours, theirs = curves(meta)
        c_ok, thr_ok = budget_figures(ours, budget_ms)
        pc_ok, pthr_ok = budget_figures(theirs, budget_ms)
        fall, fall_at = largest_fall(ours)
        peak = max(ours.images_per_s) if ours.images_per_s else None
        ppeak = max(theirs.images_per_s) if theirs.images_per_s else None
        p50_c1 = ours.p50_ms[ours.concurrency.index(1)] if 1 in ours.concurrency else None
        base_budget = base_budgets.get(variant_of(name))
        scaling = (
            thr_ok / base_budget if (thr_ok and base_budget and meta["config"]["mps"]) else None
        )
        figures[name] = {
            "peak": peak,
            "thr_ok": thr_ok,
            "fall": fall,
            "p50_c1": p50_c1,
            "scaling": scaling,
            "points": len(ours.concurrency),
        }
        lines.append(
            f"| {meta['label']} (`{name}`) | {meta['status']} | {_fmt(meta.get('load_s'), 1)} s | "
            f"{_fmt(peak)} [{_fmt(ppeak)}] | {_within(c_ok, ours)} [{_within(pc_ok, theirs)}] | "
            f"{_fmt(thr_ok)} [{_fmt(pthr_ok)}] | {_fmt(scaling, 2) + 'x' if scaling else 'n/a'} | "
            f"{fall * 100:.1f}%{f' at c={fall_at}' if fall_at else ''} | {_fmt(p50_c1, 2)} |"
        )
    lines += ["", "## Targets", ""]
    lines.append("| target | measured | met |")
    lines.append("|---|---|---|")

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    # The whole-GPU targets for `whole` and each of its variants (`whole-u8`, ...); the first
    # whole-GPU configuration if none of those ran.
    wholes = [n for n in metas if re.fullmatch(r"whole(-.*)?", n)]
    if not wholes:
        wholes = [n for n in metas if n.startswith("whole")][:1]
    for whole in wholes:
        w = figures[whole]
        tag = f" (`{whole}`)" if whole != "whole" else ""
        ok = None if w["p50_c1"] is None else w["p50_c1"] <= TARGETS["p50_c1_ms"]
        lines.append(
            f"| whole GPU{tag}: p50 at concurrency 1 <= {TARGETS['p50_c1_ms']} ms | {_fmt(w['p50_c1'], 2)} ms | {verdict(ok)} |"
        )
        ok = None if w["peak"] is None else w["peak"] >= TARGETS["peak_images_per_s"]
        lines.append(
            f"| whole GPU{tag}: peak >= {TARGETS['peak_images_per_s']:,.0f} img/s | {_fmt(w['peak'])} img/s | {verdict(ok)} |"
        )
    for name in (n for n in figures if re.fullmatch(r"mps7(-.*)?", n)):
        s = figures[name]["scaling"]
        tag = f" (`{name}` vs `mps1{variant_of(name)}`)" if name != "mps7" else ""
        lines.append(
            f"| 7 vs 1 MPS instances{tag} at p90 <= {budget_ms:g} ms: >= {TARGETS['scaling_7_vs_1']:g}x | {_fmt(s, 2) + 'x' if s else 'n/a'} | {verdict(None if s is None else s >= TARGETS['scaling_7_vs_1'])} |"
        )
    for name, f in figures.items():
        complete = f["points"] > 0
        lines.append(
            f"| no collapse up to the highest concurrency run ({name}) | largest fall {f['fall'] * 100:.1f}% (a fall beyond {COLLAPSE_TOLERANCE * 100:.0f}% counts) | "
            f"{verdict(f['fall'] <= COLLAPSE_TOLERANCE if complete else None)} |"
        )
    for name, meta in metas.items():
        lines += ["", f"## {meta['label']} (`{name}`)", "", meta["title"], ""]
        if meta.get("target"):
            lines += [f"Load sent to: {meta['target']}.", ""]
        if meta.get("message"):
            lines += [f"Note: {meta['message'].strip()}", ""]
        lines.append(
            "| c | ours img/s | perf_analyzer img/s | ours / perf_analyzer | ours p50 ms | PA p50 ms | ours p90 ms | PA p90 ms | ours p99 ms | failed | windows |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for point in meta.get("points", []):
            o, p = point.get("ours") or {}, point.get("perf_analyzer") or {}
            pa_thr = float(p["Inferences/Second"]) if p else None
            ratio = o.get("images_per_s", 0) / pa_thr if (o and pa_thr) else None
            lines.append(
                f"| {point['concurrency']} | {_fmt(o.get('images_per_s'), 1)} | {_fmt(pa_thr, 1)} | {_fmt(ratio, 3)} | "
                f"{_fmt(o.get('p50_ms'), 2)} | {_fmt(_number(p.get('p50 latency')) / 1000 if p else None, 2)} | "
                f"{_fmt(o.get('p90_ms'), 2)} | {_fmt(_number(p.get('p90 latency')) / 1000 if p else None, 2)}{'' if p.get('stable', 'yes') == 'yes' else ' (not stable)'} | "
                f"{_fmt(o.get('p99_ms'), 2)} | {o.get('failed', 'n/a')} | {o.get('windows', 'n/a')}{'' if o.get('stable', True) else ' (not stable)'} |"
            )
            if point.get("perf_analyzer_error"):
                lines.append(
                    f"|  | perf_analyzer: {point['perf_analyzer_error'][:200].replace('|', '/')} |||||||||"
                )
        if meta.get("model_init"):
            lines += ["", "Model instances at load:", ""] + [
                f"    {line.strip()[-200:]}" for line in meta["model_init"]
            ]
        commands = meta.get("commands", {})
        if commands:
            lines += ["", "Exact commands:", ""]
            for entry in commands.get("tritonserver", []):
                if entry.get("argv"):
                    env = " ".join(f"{k}={v}" for k, v in entry.get("env", {}).items())
                    lines.append(f"    {env} {' '.join(entry['argv'])}")
            if commands.get("envoy", {}).get("argv"):
                lines.append(f"    {' '.join(commands['envoy']['argv'])}")
            if commands.get("perf_analyzer"):
                lines.append(f"    {commands['perf_analyzer']}   (C = each concurrency)")
        if meta.get("mps_servers"):
            lines += ["", f"MPS servers (get_server_list): {meta['mps_servers'].strip()}"]
        snapshot = meta.get("gpu_snapshot", "")
        if "Processes" in snapshot:
            # nvidia-smi's process table once the stack was ready: type M+C = an MPS client.
            table = snapshot[snapshot.index("Processes") :].splitlines()[:30]
            lines += ["", "GPU processes once ready (nvidia-smi):", ""] + [
                f"    {t}" for t in table
            ]
    lines += [
        "",
        "## Plan",
        "",
        "```",
        plan_text.strip(),
        "```",
        "",
        "## Machine",
        "",
        "```",
        machine.strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def plot_all(
    metas: dict[str, dict[str, Any]], out: Path, budget_ms: float, plot_python: str | None
) -> list[str]:
    """Charts per configuration (ours and perf_analyzer) and all configurations together."""
    jobs = []
    for name, meta in metas.items():
        ours, theirs = curves(meta)
        series = {"our engine": ours, "perf_analyzer": theirs}
        jobs.append(
            {
                "series": {
                    k: [
                        [c, t, p]
                        for c, t, p in zip(v.concurrency, v.images_per_s, v.p90_ms, strict=True)
                    ]
                    for k, v in series.items()
                    if v.concurrency
                },
                "out_dir": str(out / name),
                "title": meta["title"]
                + f"\nResNet-50 FP16, batch-1 requests through Envoy; {meta.get('weights') or 'random weights'}",
                "prefix": "",
            }
        )
    combined = {}
    for meta in metas.values():
        ours, _ = curves(meta)
        if ours.concurrency:
            combined[meta["label"]] = [
                [c, t, p]
                for c, t, p in zip(ours.concurrency, ours.images_per_s, ours.p90_ms, strict=True)
            ]
    gpu = next((m["title"].split(",")[0].split(":")[0] for m in metas.values()), "GPU")
    jobs.append(
        {
            "series": combined,
            "out_dir": str(out),
            "prefix": "",
            "title": f"{gpu}: ResNet-50 FP16, our engine through Envoy\n"
            "NOT MIG: the MPS configurations are processes sharing one GPU via MPS",
        }
    )
    jobs = [j for j in jobs if j["series"]]
    job_file = out / "plot-jobs.json"
    job_file.write_text(json.dumps({"budget_ms": budget_ms, "jobs": jobs}))
    # In a child process: a matplotlib that does not get along with numpy<2 cannot take the
    # benchmark down with it. This python first, then the machine's own.
    problems: list[str] = []
    for python in dict.fromkeys(p for p in (sys.executable, plot_python) if p):
        text = run_text([python, str(CLI), "--plot-jobs", str(job_file)], timeout=180)
        if "plots: done" in text:
            if python != sys.executable:
                problems = [f"drawn with {python} (matplotlib not usable beside numpy<2 here)"]
            break
        problems.append(f"drawing with {python} failed: {text[-400:]}")
    job_file.unlink(missing_ok=True)
    return problems


def run_plot_jobs(job_file: Path) -> None:
    from flowerdemo.plots import SweepPoint, plot_sweeps

    data = json.loads(job_file.read_text())
    for job in data["jobs"]:
        series = {
            label: [SweepPoint(int(c), float(t), float(p)) for c, t, p in points]
            for label, points in job["series"].items()
        }
        values = [p.concurrency for points in series.values() for p in points]
        plot_sweeps(
            series,
            Path(job["out_dir"]),
            budget_ms=data["budget_ms"],
            title=job["title"],
            prefix=job["prefix"],
            log_x=bool(values) and max(values) >= 8 * min(values),
        )


def load_metas(results: Path) -> dict[str, dict[str, Any]]:
    """Every configuration's meta.json: whole GPU first, then MPS by instance count."""
    found = {p.parent.name: json.loads(p.read_text()) for p in sorted(results.glob("*/meta.json"))}

    def key(name: str) -> tuple[int, int, str]:
        if name.startswith("whole"):
            return (0, 0, name)
        match = re.match(r"mps(\d+)", name)
        return (1, int(match.group(1)), name) if match else (2, 0, name)

    return {name: found[name] for name in sorted(found, key=key)}


def write_outputs(
    results: Path, out: Path, plan_text: str, budget_ms: float, plot_python: str | None
) -> None:
    """summary.md, charts and results.tar.gz from everything in `results` (earlier calls too)."""
    metas = load_metas(results)
    if not metas:
        return
    machine = (results / "machine.txt").read_text() if (results / "machine.txt").exists() else ""
    problems = plot_all(metas, results, budget_ms, plot_python)
    text = summary_markdown(metas, plan_text, machine, budget_ms)
    if problems:
        text += "\n" + "\n".join(f"Charts: {p}" for p in problems) + "\n"
    (results / "summary.md").write_text(text)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "results.tar.gz.tmp", "w:gz") as archive:
        archive.add(results, arcname="gpu-results")
    (out / "results.tar.gz.tmp").replace(out / "results.tar.gz")
    for name in ("summary.md", "throughput.png", "latency_p90.png", "machine.txt"):
        if (results / name).exists():
            shutil.copyfile(results / name, out / name)


def summarize_folders(folders: Sequence[Path], out: Path, budget_ms: float) -> int:
    """Merge results brought back from several device calls (later calls win) into `out`."""
    merged = Path(tempfile.mkdtemp(prefix="flowerdemo-gpu-merge-"))
    try:
        plans = []
        for folder in folders:
            if folder.is_dir() and not (folder / "results.tar.gz").exists():
                # A folder written by an earlier --summarize (e.g. the committed results):
                # its configurations as they are, its plan from its summary.md.
                found = [c for c in sorted(folder.iterdir()) if (c / "meta.json").is_file()]
                if not found:
                    raise SystemExit(f"{folder}: no results.tar.gz and no */meta.json")
                for config in found:
                    shutil.rmtree(merged / config.name, ignore_errors=True)
                    shutil.copytree(config, merged / config.name)
                if (folder / "machine.txt").exists():
                    shutil.copyfile(folder / "machine.txt", merged / "machine.txt")
                summary = folder / "summary.md"
                text = summary.read_text() if summary.exists() else ""
                plan = re.search(r"## Plan\n\n```\n(.*?)\n```", text, re.S)
                if plan:
                    plans.append(plan.group(1))
                continue
            archive = folder / "results.tar.gz" if folder.is_dir() else folder
            with tarfile.open(archive) as tar, tempfile.TemporaryDirectory() as scratch:
                if sys.version_info >= (3, 12):
                    tar.extractall(scratch, filter="data")
                else:
                    tar.extractall(scratch)
                source = Path(scratch) / "gpu-results"
                for config in source.iterdir():
                    if config.is_dir() and (config / "meta.json").exists():
                        shutil.rmtree(merged / config.name, ignore_errors=True)
                        shutil.copytree(config, merged / config.name)
                if (source / "machine.txt").exists():
                    shutil.copyfile(source / "machine.txt", merged / "machine.txt")
                if (source / "plan.txt").exists():
                    plans.append(f"{folder}:\n" + (source / "plan.txt").read_text())
        (merged / "plan.txt").write_text("\n".join(plans))
        write_outputs(merged, out, "\n".join(plans), budget_ms, None)
        for name in ("throughput.png", "latency_p90.png"):
            if (merged / name).exists():
                shutil.copyfile(merged / name, out / name)
        for config in merged.iterdir():
            if config.is_dir():
                target = out / config.name
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(config, target, ignore=shutil.ignore_patterns("tritonserver-*.log"))
        (out / "results.tar.gz").unlink(missing_ok=True)
        print(f"summary: {out / 'summary.md'}")
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    return 0
