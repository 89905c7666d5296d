"""The ceiling measurements as a table (ceiling.md, ceiling.csv) and two charts: throughput
per measurement with its p90 and the component that caps it, and the CPU each component used.
Runs here, after the device calls (matplotlib), from ceiling.json and torch-limit.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from gpubench.ceiling import name_cap
from gpubench.configs import BUDGET_MS, TARGETS

COMPONENT_ORDER = (
    "tritonserver",
    "python stub",
    "envoy",
    "client (our engine)",
    "perf_analyzer",
)


def _cores(record: dict[str, Any], name: str, inner: str) -> str:
    entry = record.get("cpu", {}).get("components", {}).get(name)
    if not entry:
        return "-"
    return f"{entry['cores']:.2f} ({entry[inner]:.2f})"


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{float(value):,.{digits}f}"


def row(record: dict[str, Any]) -> dict[str, str]:
    stub = record.get("stub", {})
    per_batch = stub.get("per_batch_ms", {})
    stub_cell = _cores(record, "python stub", "busiest_thread")
    if stub.get("busiest_instance") is not None:
        stub_cell += f"; in execute {stub['busiest_instance']:.2f}"
    path = "direct" if record["path"] == "direct" else "Envoy"
    if record.get("envoy_workers"):
        path += f" ({record['envoy_workers']} workers)"
    client = f"ours x{record['processes']}" if record["client"] == "ours" else "perf_analyzer"
    if record["client"] == "ours":
        # Records from before the stream path have no grpc_calls: those were unary calls.
        client += ", streams" if record.get("grpc_calls") == "stream" else ", unary"
    return {
        "stack": record["config"],
        "varied": record["varied"],
        "client": client,
        "path": path,
        "c": str(record["concurrency"]),
        "batch": str(record["batch"]),
        "img/s": _num(record.get("images_per_s")),
        "p90 ms": _num(record.get("p90_ms"), 1),
        "GPU util %": _num(record.get("gpu", {}).get("gpu_util_mean")),
        "idle CPU %": _num(
            None
            if record.get("cpu", {}).get("machine_idle") is None
            else record["cpu"]["machine_idle"] * 100
        ),
        "tritonserver cores (top thread)": _cores(record, "tritonserver", "busiest_thread"),
        "stub cores (top thread)": stub_cell,
        "Envoy cores (top thread)": _cores(record, "envoy", "busiest_thread"),
        "client cores (top process)": _cores(record, "client (our engine)", "busiest_process"),
        "perf_analyzer cores (top thread)": _cores(record, "perf_analyzer", "busiest_thread"),
        "mean batch": _num(stub.get("mean_batch"), 1),
        "stub ms/batch host / GPU": (
            f"{per_batch['host']:.2f} / {per_batch['device_network']:.2f}" if per_batch else "-"
        ),
        "cap (nearest saturation)": record.get("cap", "")
        + (f"; error: {record['error'][:80]}" if record.get("error") else ""),
    }


def torch_table(limit: dict[str, Any]) -> list[str]:
    whole = (limit.get("whole") or [{}])[0] if isinstance(limit.get("whole"), list) else {}
    one = limit.get("mps1", {}).get("graph_img_per_s_total", {})
    seven = limit.get("mps7", {}).get("graph_img_per_s_total", {})
    lines = [
        "| batch | whole GPU: ms per batch (graph) | whole GPU img/s (graph) | whole GPU img/s with host copies (runner.run, 4 torch threads) | 1 MPS client 14% img/s | 7 MPS clients 14% img/s, in all | 7 / 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for bucket, entry in whole.get("buckets", {}).items():
        a, b = one.get(bucket), seven.get(bucket)
        lines.append(
            f"| {bucket} | {entry['graph_ms']:.2f} | {entry['graph_img_per_s']:,.0f} | "
            f"{_num(entry.get('with_copies_img_per_s'))} | {_num(a)} | {_num(b)} | "
            f"{f'{b / a:.2f}x' if a and b else 'n/a'} |"
        )
    return lines


def plot(records: list[dict[str, Any]], out: Path, gpu: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['config']}: {r['varied']} ({'ours' if r['client'] == 'ours' else 'PA'}, c={r['concurrency']}, b={r['batch']})"
        for r in records
    ]
    height = max(4.0, 0.32 * len(records) + 1.5)
    figure, axis = plt.subplots(figsize=(13, height))
    values = [r.get("images_per_s") or 0 for r in records]
    colors = ["#2b8a3e" if (r.get("p90_ms") or 1e9) <= BUDGET_MS else "#c92a2a" for r in records]
    positions = range(len(records))
    axis.barh(list(positions), values, color=colors)
    for y, r in zip(positions, records, strict=True):
        text = f" {r.get('images_per_s') or 0:,.0f} img/s, p90 {_num(r.get('p90_ms'), 1)} ms | cap: {r.get('cap', '')}"
        axis.text(values[y], y, text, va="center", fontsize=7)
    axis.axvline(TARGETS["peak_images_per_s"], color="black", linestyle="--", linewidth=1)
    axis.set_yticks(list(positions), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("images/s (green: p90 within 50 ms; dashed: the 8,000 img/s target)")
    axis.set_xlim(0, max([*values, TARGETS["peak_images_per_s"]]) * 1.9)
    axis.set_title(
        f"{gpu}: ResNet-50 FP16 served by Triton (Python backend), one thing varied at a time\n"
        "NOT MIG: the mps configurations are processes sharing one GPU via MPS",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(out / "ceiling-throughput.png", dpi=60, bbox_inches="tight")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(13, height))
    left = [0.0] * len(records)
    palette = ("#1971c2", "#e8590c", "#6741d9", "#2f9e44", "#868e96")
    for name, color in zip(COMPONENT_ORDER, palette, strict=True):
        widths = [
            r.get("cpu", {}).get("components", {}).get(name, {}).get("cores", 0.0) for r in records
        ]
        axis.barh(list(positions), widths, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, r in zip(positions, records, strict=True):
        gpu_util = r.get("gpu", {}).get("gpu_util_mean")
        axis.text(left[y], y, f" GPU {_num(gpu_util)}%", va="center", fontsize=7)
    cpus = next((r.get("cpu", {}).get("cpus") for r in records if r.get("cpu")), None)
    if cpus:
        axis.axvline(cpus, color="black", linestyle="--", linewidth=1)
    axis.set_yticks(list(positions), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel(f"CPU cores used (from /proc; dashed: the machine's {cpus} cores)")
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title(
        f"{gpu}: CPU per component during each measurement, GPU utilisation at the bar's end\n"
        "NOT MIG: the mps configurations are processes sharing one GPU via MPS",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(out / "ceiling-cpu.png", dpi=60, bbox_inches="tight")
    plt.close(figure)


def write_ceiling_report(files: list[Path], out: Path) -> int:
    records: list[dict[str, Any]] = []
    stacks: list[dict[str, Any]] = []
    limit: dict[str, Any] = {}
    gpu = "GPU"
    for path in files:
        data = json.loads(path.read_text())
        if "records" in data:
            # The cap named again with the current rule (the run's own naming is kept as
            # "cap_at_run").
            for record in data["records"]:
                record["cap_at_run"] = record.get("cap", "")
                record["cap"] = name_cap(record)
            records += data["records"]
            stacks += data.get("stacks", [])
            gpu = data.get("gpu", gpu)
        else:
            # Several torch-limit.json files: later ones add to (or replace) earlier parts.
            limit.update({key: value for key, value in data.items() if value})
    out.mkdir(parents=True, exist_ok=True)
    rows = [row(r) for r in records]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] if rows else []
    lines += ["| " + " | ".join(r.values()) + " |" for r in rows]
    if rows:
        with (out / "ceiling.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        plot(records, out, gpu)
    text = ["## Where the ceiling comes from", "", *lines, ""]
    text += ["Stacks:", ""] + [
        f"- `{s['config']}`: {s.get('status', '?')}, ready in {s.get('ready_s', 'n/a')} s"
        for s in stacks
    ]
    if limit:
        text += ["", "## The model alone (PyTorch, no Triton)", "", *torch_table(limit)]
    (out / "ceiling.md").write_text("\n".join(text) + "\n")
    print(f"ceiling report: {out / 'ceiling.md'}")
    return 0
