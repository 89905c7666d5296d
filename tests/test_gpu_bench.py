"""The GPU benchmark's parts that need no GPU: configurations, the ResNet-50 repository, merging
windows from several load processes, the report's figures, and staging a payload.

The network itself (`resnet50_model.py --cpu-smoke`), the whole driver against a real stack on the
CPU (`run_gpu_bench.py --cpu`) and pack.sh need torch or the network; see benchmarks/gpu/README.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import sys
import tarfile
import time
from array import array
from dataclasses import replace
from pathlib import Path

import pytest

GPU_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU_DIR))

import multiload  # noqa: E402
import resnet50_model  # noqa: E402
import run_gpu_bench  # noqa: E402
import stage  # noqa: E402
from gpubench import ceiling, configs, live, probe, report  # noqa: E402

from flowerdemo.core.sweep import SweepSettings, WindowMeasurement, step_from_windows  # noqa: E402
from flowerdemo.resources import labels_file  # noqa: E402


def _configs(text: str) -> list[configs.Config]:
    return configs.parse_configs(
        text,
        mps_percentage=14,
        whole_instances=2,
        mps_instances=1,
        whole_copy_threads=4,
        mps_copy_threads=2,
    )


def test_configurations_parse_and_say_not_mig():
    whole, mps1, mps7, whole3, mps4x2 = _configs("whole,mps1,mps7,wholex3,mps4x2")
    assert (whole.tritons, whole.mps, whole.model_instances) == (1, False, 2)
    assert (mps7.tritons, mps7.mps, mps7.model_instances, mps7.copy_threads) == (7, True, 1, 2)
    assert whole3.model_instances == 3 and (mps4x2.tritons, mps4x2.model_instances) == (4, 2)
    assert "NOT MIG" in mps7.title("H100") and "7 processes" in mps7.title("H100")
    assert "NOT MIG" in mps1.title("H100") and "14%" in mps1.title("H100")
    assert "NOT MIG" not in whole.title("H100") and "no MPS" in whole.title("H100")
    with pytest.raises(ValueError, match="configuration 'mig7'"):
        _configs("mig7")


def test_uint8_and_direct_variants_parse_and_say_so():
    u8, u8_direct, direct, mps7_u8, cpu = _configs(
        "whole-u8,whole-u8-direct,whole-direct,mps7-u8,cpu-u8-direct"
    )
    assert (u8.input_dtype, u8.direct, u8.model_instances, u8.tritons) == ("uint8", False, 2, 1)
    assert (u8_direct.input_dtype, u8_direct.direct) == ("uint8", True)
    assert (direct.input_dtype, direct.direct) == ("fp32", True)
    assert (mps7_u8.tritons, mps7_u8.mps, mps7_u8.input_dtype) == (7, True, "uint8")
    assert (cpu.kind, cpu.input_dtype, cpu.direct) == ("cpu", "uint8", True)
    assert "direct, no Envoy: diagnostic" in direct.label
    assert "direct, no Envoy: diagnostic" in direct.title("H100")
    assert "UINT8" in mps7_u8.label and "NOT MIG" in mps7_u8.title("H100")
    whole = _configs("whole")[0]
    assert (whole.input_dtype, whole.direct, whole.label) == (
        "fp32",
        False,
        "1 Triton, whole GPU, 2 model instances",
    )
    with pytest.raises(ValueError, match="needs one Triton"):
        _configs("mps7-direct")
    with pytest.raises(ValueError, match="configuration 'whole-direct-u8'"):
        _configs("whole-direct-u8")
    assert configs.cpu_configs("cpu-u8,cpu-direct") == "cpu-u8,cpu-direct"
    assert configs.cpu_configs("whole-u8") == "cpu"
    assert configs.cpu_configs(None) == "cpu"


def test_second_round_plan_fits_one_call():
    args = run_gpu_bench.parse_args(
        ["--configs", "whole-direct,whole-u8,mps1-u8,mps7-u8", "--no-perf-analyzer"]
    )
    plan = configs.build_plan(args, Path("nonexistent-home"))
    plan = replace(plan, perf_analyzer="perf_analyzer")
    direct, u8 = plan.configs[0], plan.configs[1]
    assert plan.concurrencies_for(direct) == (1, 8, 64, 256)
    assert plan.concurrencies_for(u8) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    # The call's benchmark has about 500 s (550 s less staging, less the teardown reserve).
    assert sum(plan.typical_s(c) for c in plan.configs) < 480


def test_uint8_repository_takes_raw_pixels(tmp_path):
    root = resnet50_model.write_repository(tmp_path / "repo", labels_file(), input_dtype="uint8")
    config = (root / "resnet50" / "config.pbtxt").read_text()
    assert "data_type: TYPE_UINT8" in config and "data_type: TYPE_FP32" in config  # in, out
    assert 'key: "input_dtype" value: { string_value: "uint8" }' in config
    assert "TYPE_UINT8" not in resnet50_model.config_pbtxt()
    with pytest.raises(ValueError, match="input_dtype"):
        resnet50_model.config_pbtxt(input_dtype="fp16")


def test_repository_batches_into_the_graph_buckets(tmp_path):
    root = resnet50_model.write_repository(
        tmp_path / "repo", labels_file(), instances=2, weights="w.pt", copy_threads=3
    )
    model = root / "resnet50"
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*")) == [
        "1",
        "1/model.py",
        "1/resnet.py",
        "config.pbtxt",
        "labels.txt",
    ]
    config = (model / "config.pbtxt").read_text()
    for expected in (
        'name: "resnet50"',
        'backend: "python"',
        "max_batch_size: 128",
        "preferred_batch_size: [ 1, 2, 4, 8, 16, 32, 64, 128 ]",
        "max_queue_delay_microseconds: 100",
        "count: 2",
        "kind: KIND_GPU",
        "gpus: [ 0 ]",
        "data_type: TYPE_FP32",
        "dims: [ 3, 224, 224 ]",
        "dims: [ 102 ]",
        'label_filename: "labels.txt"',
        'key: "buckets" value: { string_value: "1,2,4,8,16,32,64,128" }',
        'key: "weights" value: { string_value: "w.pt" }',
        'key: "copy_threads" value: { string_value: "3" }',
    ):
        assert expected in config, expected
    assert "class TritonPythonModel" in (model / "1" / "model.py").read_text()
    # The network's one definition, the training package's, travels beside model.py.
    assert (model / "1" / "resnet.py").read_bytes() == resnet50_model.RESNET_SOURCE.read_bytes()
    assert resnet50_model.RESNET_SOURCE.match("flowerdemo/training/resnet.py")
    cpu = resnet50_model.config_pbtxt(kind="cpu", buckets=(4, 1, 2))
    assert "kind: KIND_CPU" in cpu and "max_batch_size: 4" in cpu and "gpus" not in cpu


def test_a_batch_goes_to_the_smallest_bucket_that_holds_it():
    buckets = resnet50_model.DEFAULT_BUCKETS
    assert [resnet50_model.bucket_for(n, buckets) for n in (1, 2, 3, 5, 33, 128)] == [
        1,
        2,
        4,
        8,
        64,
        128,
    ]
    with pytest.raises(ValueError):
        resnet50_model.bucket_for(129, buckets)


def test_concurrency_is_spread_over_the_load_processes():
    assert multiload.shares(1, 8) == [1]
    assert multiload.shares(8, 8) == [1] * 8
    assert multiload.shares(20, 8) == [3, 3, 3, 3, 2, 2, 2, 2]
    assert sum(multiload.shares(256, 6)) == 256


def _part(seconds: float, latencies: list[float], failed: int = 0) -> multiload.WindowPart:
    return multiload.WindowPart(seconds, len(latencies), array("d", latencies).tobytes(), failed)


def test_windows_of_all_processes_merge_into_one():
    merged = multiload.merge_windows([_part(1.0, [0.010, 0.020]), _part(0.5, [0.030], failed=2)])
    assert merged.images_per_s == pytest.approx(2 + 2)
    assert merged.requests_per_s == pytest.approx(4)
    assert sorted(merged.latencies_s) == [0.010, 0.020, 0.030]
    assert merged.failed == 2


def test_a_step_uses_the_last_stable_windows_as_run_sweep_does():
    settings = SweepSettings((1,), stable_windows=3, tolerance=0.1, max_windows=5)
    noisy = WindowMeasurement(50.0, 50.0, (0.5,), 1)
    steady = WindowMeasurement(100.0, 100.0, (0.010,) * 10, 0)
    step = step_from_windows(4, [noisy, steady, steady, steady], settings)
    assert step.stable and step.windows == 4 and step.failed == 1
    assert step.images_per_s == pytest.approx(100.0)
    assert step.latency.p90 == pytest.approx(0.010)


def _meta(name: str, mps: bool, points: list[tuple[int, float, float, float]]) -> dict:
    return {
        "config": {"name": name, "mps": mps},
        "label": name,
        "title": f"H100, NOT MIG: {name}" if mps else "H100: whole",
        "status": "done",
        "load_s": 30.0,
        "weights": "random (seed 0)",
        "points": [
            {
                "concurrency": c,
                "ours": {
                    "images_per_s": t,
                    "p50_ms": p50,
                    "p90_ms": p90,
                    "p99_ms": p90,
                    "failed": 0,
                    "windows": 3,
                    "stable": True,
                },
                "perf_analyzer": {
                    "Concurrency": str(c),
                    "Inferences/Second": str(t * 1.02),
                    "p50 latency": str(int(p50 * 1000)),
                    "p90 latency": str(int(p90 * 1000)),
                },
            }
            for c, t, p50, p90 in points
        ],
    }


def test_report_figures_budget_scaling_and_collapse():
    curve = report.Curve([1, 2, 4, 8], [100.0, 190.0, 170.0, 300.0], [1, 1, 1, 1], [10, 20, 60, 40])
    assert report.budget_figures(curve, 50.0) == (8, 300.0)
    fall, where = report.largest_fall(curve)
    assert fall == pytest.approx(20 / 190) and where == 4
    metas = {
        "whole": _meta("whole", False, [(1, 450.0, 2.2, 2.6), (256, 9000.0, 25.0, 30.0)]),
        "mps1": _meta(
            "mps1", True, [(1, 300.0, 3.0, 3.5), (256, 1000.0, 60.0, 70.0), (64, 900.0, 30.0, 45.0)]
        ),
        "mps7": _meta("mps7", True, [(1, 300.0, 3.0, 3.5), (256, 5400.0, 40.0, 48.0)]),
    }
    text = report.summary_markdown(metas, "plan", "machine", 50.0)
    assert "NOT MIG" in text
    assert "| 7 vs 1 MPS instances at p90 <= 50 ms: >= 5x | 6.00x | yes |" in text
    assert "| whole GPU: p50 at concurrency 1 <= 2.5 ms | 2.20 ms | yes |" in text
    assert "| whole GPU: peak >= 8,000 img/s | 9,000 img/s | yes |" in text
    assert "0.980" in text  # ours / perf_analyzer at each point
    assert math.isclose(report.largest_fall(report.curves(metas["mps1"])[0])[0], 0.1)


def _fake_payload(tmp_path: Path) -> tuple[bytes, dict]:
    def xz_tar(files: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    import lzma

    members = {
        "triton.tar.xz": xz_tar({"pytriton/tritonserver/bin/tritonserver": b"x"}),
        "envoy.xz": lzma.compress(b"envoy"),
        "pylibs.tar.xz": xz_tar({"fakepkg/__init__.py": b"VALUE = 1\n"}),
        "perf.tar.xz": xz_tar({"perf_analyzer": b"pa", "lib/libb64.so.0d": b"b"}),
        "versions.json": b"{}",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    payload = buffer.getvalue()
    half = len(payload) // 2
    pieces = [payload[:half], payload[half:]]
    manifest = {
        "payload": {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
            "pieces": [
                {
                    "name": f"payload.part{i}",
                    "folder": f".gpu-{'ab'[i]}",
                    "size": len(p),
                    "sha256": hashlib.sha256(p).hexdigest(),
                }
                for i, p in enumerate(pieces)
            ],
        },
        "weights": [],
    }
    for index, folder in enumerate((".gpu-a", ".gpu-b", ".gpu-c")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "MANIFEST.json").write_text(json.dumps(manifest))
        if index < 2:
            (tmp_path / folder / f"payload.part{index}").write_bytes(pieces[index])
    return payload, manifest


def test_stage_keeps_pieces_until_all_came_then_installs(tmp_path):
    _fake_payload(tmp_path)
    home = tmp_path / "home"
    assert stage.main([str(tmp_path / ".gpu-a"), "--home", str(home)]) == 0
    assert (home / "incoming" / "payload.part0").is_file() and not (home / ".installed").exists()
    # Incomplete and asked to be complete: refuses.
    assert stage.main([str(tmp_path / ".gpu-c"), "--home", str(home), "--require-complete"]) == 1
    stage.main([str(tmp_path / ".gpu-b"), "--home", str(home)])
    assert (home / ".installed").is_file()
    assert (home / "bin" / "envoy").read_bytes() == b"envoy"
    assert (home / "triton" / "pytriton" / "__init__.py").is_file()
    assert (home / "perf" / "lib" / "libb64.so.0d").is_file()
    assert not (home / "incoming").exists()
    pth = next((home / "venv").rglob("flowerdemo_gpu.pth")).read_text().splitlines()
    # The carried packages come before the machine's own site-packages.
    assert pth[0] == str(home / "site") and pth[1] == str(home / "triton")
    assert pth[2].startswith("import site; site.addsitedir(")
    # A damaged piece is refused.
    (tmp_path / ".gpu-a" / "payload.part0").write_bytes(b"damaged")
    with pytest.raises(SystemExit, match="damaged"):
        stage.main([str(tmp_path / ".gpu-a"), "--home", str(tmp_path / "other")])


def test_outputs_hold_the_summary_charts_and_every_configuration(tmp_path):
    results = tmp_path / "results"
    for name, mps, points in (
        ("whole", False, [(1, 450.0, 2.2, 2.6), (16, 5000.0, 3.0, 4.0), (256, 9000.0, 25.0, 30.0)]),
        ("mps7", True, [(1, 300.0, 3.0, 3.5), (16, 3000.0, 5.0, 6.0), (256, 5400.0, 40.0, 48.0)]),
    ):
        (results / name).mkdir(parents=True)
        (results / name / "meta.json").write_text(json.dumps(_meta(name, mps, points)))
    out = tmp_path / "out"
    report.write_outputs(results, out, "the plan", 50.0, None)
    assert sorted(p.name for p in out.iterdir()) == [
        "latency_p90.png",
        "results.tar.gz",
        "summary.md",
        "throughput.png",
    ]
    with tarfile.open(out / "results.tar.gz") as archive:
        names = archive.getnames()
    for name in ("whole", "mps7"):
        assert f"gpu-results/{name}/throughput.png" in names
        assert f"gpu-results/{name}/latency_p90.png" in names
    assert "Charts:" not in (out / "summary.md").read_text()
    # Merging what two device calls brought back gives the same report, one folder each.
    merged = tmp_path / "merged"
    assert report.summarize_folders([out], merged, 50.0) == 0
    assert (merged / "summary.md").is_file() and (merged / "mps7" / "meta.json").is_file()


def test_summarize_adds_a_new_run_to_a_folder_written_by_summarize(tmp_path):
    """The committed results folder (no results.tar.gz, one folder per configuration) plus a
    later device call's output: the old configurations stay, the new ones join."""
    committed = tmp_path / "committed"
    for name, mps in (("whole", False), ("mps1", True), ("mps7", True)):
        (committed / name).mkdir(parents=True)
        meta = _meta(name, mps, [(1, 300.0, 3.0, 3.5), (64, 2000.0, 30.0, 40.0)])
        (committed / name / "meta.json").write_text(json.dumps(meta))
    (committed / "summary.md").write_text(
        "# old\n\n## Plan\n\n```\nrun of earlier:\nold plan\n```\n"
    )
    results = tmp_path / "results"
    for name, mps, top in (
        ("whole-u8", False, 8000.0),
        ("mps1-u8", True, 900.0),
        ("mps7-u8", True, 5400.0),
    ):
        (results / name).mkdir(parents=True)
        meta = _meta(name, mps, [(1, 400.0, 2.0, 2.4), (64, top, 30.0, 40.0)])
        (results / name / "meta.json").write_text(json.dumps(meta))
    (results / "plan.txt").write_text("run of later:\nnew plan\n")  # as a device call keeps it
    new = tmp_path / "new"
    report.write_outputs(results, new, "run of later:\nnew plan", 50.0, None)
    out = tmp_path / "merged"
    assert report.summarize_folders([committed, new], out, 50.0) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["mps1", "mps1-u8", "mps7", "mps7-u8", "whole", "whole-u8"]
    text = (out / "summary.md").read_text()
    assert "old plan" in text and "new plan" in text
    assert "| whole GPU (`whole-u8`): peak >= 8,000 img/s | 8,000 img/s | yes |" in text
    assert (
        "| 7 vs 1 MPS instances (`mps7-u8` vs `mps1-u8`) at p90 <= 50 ms: >= 5x | 6.00x | yes |"
        in text
    )
    assert "| 7 vs 1 MPS instances at p90 <= 50 ms: >= 5x | 1.00x | **no** |" in text
    # Summarizing into the committed folder itself works too (it is read before it is written).
    assert report.summarize_folders([committed, new], committed, 50.0) == 0
    assert (committed / "mps7-u8" / "meta.json").is_file() and (
        committed / "mps7" / "meta.json"
    ).is_file()


def test_process_sample_measures_a_busy_client_and_the_machine():
    import subprocess

    # The child says when its busy loop begins and spins until it is killed: on a loaded machine
    # its start-up alone can take longer than any fixed sleep.
    busy = subprocess.Popen(
        [sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert busy.stdout is not None and busy.stdout.readline().strip() == "spinning"
        before = probe.ProcessSample.take([busy.pid])
        time.sleep(0.8)
        usage = before.usage_until(probe.ProcessSample.take([busy.pid]))
    finally:
        busy.kill()
        busy.wait(timeout=10)
    client = usage["components"][probe.CLIENT]
    # Only a share of a core on a busy machine, but far above an idle process's zero.
    assert client["n"] == 1 and 0.02 < client["cores"] <= 1.05
    assert client["busiest_thread"] == pytest.approx(client["cores"], abs=0.05)
    assert 0.0 <= usage["machine_idle"] <= 1.0 and usage["cpus"] == os.cpu_count()
    # Processes that are not on this run's path are left out: besides the client and the driver,
    # only servers this process started itself (the suite's shared stack, when it runs) count.
    own_servers = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            if int(text[text.rindex(")") + 2 :].split()[1]) == os.getpid():
                own_servers |= {
                    component
                    for executable, component in probe.COMPONENTS
                    if text[text.index("(") + 1 : text.rindex(")")] == executable[:15]
                }
    assert set(usage["components"]) - {probe.CLIENT, probe.DRIVER} <= own_servers


def test_stub_timing_gives_host_and_device_time_per_batch(tmp_path):
    def snapshot(at, batches, requests, images, fetch, run, respond, network, span, between):
        return {
            "pid": 7,
            "at": at,
            "batches": batches,
            "requests": requests,
            "images": images,
            "fetch_s": fetch,
            "run_s": run,
            "respond_s": respond,
            "network_ms": network,
            "span_ms": span,
            "between_s": between,
        }

    path = tmp_path / "resnet50_0_0-7.json"
    path.write_text(json.dumps(snapshot(10.0, 5, 50, 50, 0.1, 0.5, 0.1, 300.0, 400.0, 0.2)))
    before = probe.StubTiming.read(tmp_path)
    path.write_text(json.dumps(snapshot(12.0, 105, 3250, 3250, 0.3, 1.5, 0.2, 1300.0, 1600.0, 0.4)))
    figures = before.until(probe.StubTiming.read(tmp_path))
    assert figures["batches"] == 100 and figures["requests"] == 3200
    assert figures["mean_batch"] == 32.0
    per_batch = figures["per_batch_ms"]
    assert per_batch["execute"] == pytest.approx(13.0)  # (0.2 + 1.0 + 0.1) s / 100
    assert per_batch["device_network"] == pytest.approx(10.0)
    assert per_batch["host"] == pytest.approx(13.0 - 12.0)  # execute less the device span
    assert per_batch["between_executes"] == pytest.approx(2.0)
    assert figures["busiest_instance"] == pytest.approx(1.3 / 2.0)
    assert probe.StubTiming.read(tmp_path / "missing").files == {}
    assert before.until(before) == {"instances": {}}  # no batch in between


def test_the_cap_is_the_component_nearest_saturation():
    record = {
        "cpu": {
            "components": {
                "envoy": {"busiest_thread": 0.4},
                "tritonserver": {"busiest_thread": 0.6},
                "driver": {"busiest_thread": 1.0},
            },
            "machine_idle": 0.5,
        },
        "stub": {"busiest_instance": 0.97},
        "gpu": {"gpu_util_mean": 45.0},
    }
    assert ceiling.name_cap(record) == "python stub 0.97"
    record["stub"]["busiest_instance"] = 0.3
    assert ceiling.name_cap(record).startswith("none saturated (highest: tritonserver 0.60")
    assert ceiling.name_cap({}) == "not measured"
    # Under MPS the slices' own device time counts, not NVML's any-kernel-running figure.
    record["config"] = "mps7-u8"
    record["gpu"]["gpu_util_mean"] = 99.0
    record["stub"] = {
        "busiest_instance": 0.5,
        "instances": {"a": {"busy": 0.5}, "b": {"busy": 0.7}},
        "per_batch_ms": {"execute": 10.0, "device_span": 8.0},
    }
    assert ceiling.name_cap(record) == "none saturated (highest: tritonserver 0.60)"
    record["stub"]["instances"] = {"a": {"busy": 0.95}, "b": {"busy": 0.95}}
    record["stub"]["busiest_instance"] = 0.95
    record["stub"]["per_batch_ms"]["device_span"] = 9.5
    assert ceiling.name_cap(record) == "python stub 0.95"


def test_ceiling_sets_vary_one_thing_at_a_time():
    sets = ceiling.experiment_sets(envoy_workers=8)
    instances = [e.config for e in sets["instances"]]
    assert instances == ["wholex2-u8", "wholex1-u8", "wholex4-u8", "wholex8-u8"]
    baseline, reference, *others = sets["instances"][0].probes
    assert baseline.varied == "baseline" and reference.client == "perf_analyzer"
    # Only the client differs between the two references; each variant changes one thing
    # against the reference of its own client.
    assert {k for k, v in vars(reference).items() if v != getattr(baseline, k)} == {
        "varied",
        "client",
    }
    for other in others:
        against = baseline if other.client == "ours" else reference
        changed = {
            key
            for key, value in vars(other).items()
            if key != "varied" and value != getattr(against, key)
        }
        # batch-8 requests keep the images in flight: batch and concurrency change together.
        assert changed and (len(changed) == 1 or changed == {"batch", "concurrency"}), other
    assert all(p.envoy_workers != 8 for p in others)  # 8 is the stack's own Envoy
    assert {e.copy_threads for e in sets["threads"]} == {1}
    for experiment in (*sets["instances"], *sets["mps"], *sets["threads"], *sets["fivex"]):
        _configs(experiment.config)  # every configuration name parses


def test_live_report_gives_medians_per_step_after_settling(tmp_path, capsys):
    # 1 s samples: c=2 from 0 to 9 s, c=8 from 10 to 29 s (two steps of 10 s), c=1 from 30 to 33 s.
    timeline = ["t_s,concurrency,p90_ms,ready,target,images_per_s"]
    late_p90 = [10, 20, 30, 40, 60, 60]  # the c=2 step's samples after its first 40% (4 s)
    for t in range(34):
        concurrency = 2 if t < 10 else 8 if t < 30 else 1
        if t < 4:
            p90, images = "80", 100  # settling: left out
        elif t < 10:
            p90, images = str(late_p90[t - 4]), 200
        else:
            p90, images = ("" if t == 25 else "45"), 300 + t
        ready = 2 if 22 <= t < 30 else 1
        timeline.append(f"{t},{concurrency},{p90},{ready},{ready},{images}")
    (tmp_path / "timeline-autoscale.csv").write_text("\n".join(timeline) + "\n")
    # A probe row every 2 s, covering the 2 s before it.
    probe_rows = [",".join(("t_s", *live.PROBE_FIELDS))]
    busiest = {6: 0.5, 8: 0.9, 10: 0.7}
    for t in range(2, 34, 2):
        gpu = "" if t == 8 else str(90 + t)
        probe_rows.append(f"{t},1.2,{busiest.get(t, 0.3)},0.4,0.5,0.6,0.{t % 10},{gpu}")
    (tmp_path / "probe-autoscale.csv").write_text("\n".join(probe_rows) + "\n")

    rows = live.step_table(
        tmp_path / "timeline-autoscale.csv", tmp_path / "probe-autoscale.csv", 50.0, step_s=10
    )
    assert [row["concurrency"] for row in rows] == [2, 8, 8, 1]
    first, second, third, last = rows
    # Samples 4..9 s kept; the probe rows ending at 6, 8 and 10 s lie wholly inside 4..10 s.
    assert (first["from_s"], first["to_s"], first["samples"]) == (4.0, 10.0, 6)
    assert (first["images_per_s"], first["p90_ms"]) == (200, 35)
    assert first["within_budget"] == pytest.approx(4 / 6)
    assert first["ready_at_end"] == 1 and first["probe_rows"] == 3
    assert first["client_busiest_thread"] == 0.7 and first["client_cores"] == 1.2
    assert first["gpu_util"] == 98  # the empty cell at 8 s is left out: median of 96 and 100
    # c=8 ran twice as long as a step: two steps, each keeping its last 6 s.
    assert (second["from_s"], second["samples"], second["ready_at_end"]) == (14.0, 6, 1)
    assert second["images_per_s"] == pytest.approx(300 + 16.5)
    assert (third["from_s"], third["ready_at_end"], third["within_budget"]) == (24.0, 2, 1.0)
    assert third["samples"] == 6 and third["p90_ms"] == 45  # the empty p90 at 25 s left out
    # The last step ends at its last sample: 30..33 s, so 31.2..33 s kept.
    assert (last["samples"], last["ready_at_end"], last["probe_rows"]) == (2, 1, 0)
    assert math.isnan(last["client_cores"])

    (tmp_path / "live.json").write_text(
        json.dumps({"budget_ms": 50, "step_s": {"autoscale": 10}, "runs": {"autoscale": {}}})
    )
    assert run_gpu_bench.main(["--live-report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "first 40% of each step left out as settling" in text
    assert "### autoscale (10 s a step)" in text
    # The first step's idle share: the median of 0.6, 0.8 and 0.0 (rows at 6, 8 and 10 s).
    assert (
        "| 2 | 4-10 | 200 | 35.0 | 67% | 1 | 1.20 | 0.70 | 0.40 | 0.50 | 0.60 | 60% | 98 |" in text
    )
    assert "| 1 | 31-33 | 332 | 45.0 | 100% | 1 | - | - | - | - | - | - | - |" in text


def test_the_live_run_builds_its_gpu_stack_as_the_ceiling_does(tmp_path):
    """The live run's Tritons come from the measurement's own stack_parts: 7 MPS clients at
    14% of the SMs, one model instance and one torch thread each, UINT8 input."""
    from gpubench.machine import Deadline
    from gpubench.measure import stack_parts

    plan = configs.build_plan(run_gpu_bench.parse_args([]), Path("nonexistent-home"))
    config = live.live_config(7)
    repository, settings, variables = stack_parts(
        config, plan, tmp_path, Deadline(time.monotonic() + 600), mps=None
    )
    assert (settings.instances, settings.devices, settings.model_name) == (
        7,
        ("cuda:0",),
        configs.MODEL,
    )
    assert settings.repository == repository and settings.envoy_concurrency == plan.envoy_workers
    assert variables == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(live.MPS_PERCENTAGE)}
    written = (repository / configs.MODEL / "config.pbtxt").read_text()
    assert "TYPE_UINT8" in written and "count: 1" in written
    assert 'key: "copy_threads"' in written and 'string_value: "1"' in written
