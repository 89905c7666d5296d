"""The first start explains itself: before Qt loads, a missing system library or an unusable
display is named in one paragraph, with the apt line from the list the booth image installs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowerdemo import display_check
from flowerdemo.display_check import (
    PlatformVerdict,
    check_display,
    explain,
    read_platform_packages,
    x_display_error,
)

REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / "packaging" / "docker" / "install-client-deps.sh"
HIDDEN_LIBRARY = "libxcb-cursor.so.0"


def test_the_app_and_the_install_script_read_one_package_list() -> None:
    packages = read_platform_packages()
    printed = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), "--print-apt-packages"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert list(packages.packages) == printed
    assert packages.by_library[HIDDEN_LIBRARY] == "libxcb-cursor0"
    assert packages.by_library["libwayland-cursor.so.0"] == "libwayland-cursor0"
    assert packages.install_line() == "sudo apt-get install " + " ".join(printed)


def _library_path(soname: str) -> Path | None:
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    match = re.search(rf"^\s+{re.escape(soname)} \(.*\) => (\S+)$", cache, re.MULTILINE)
    return Path(match.group(1)) if match else None


# Runs the rest of its arguments in a private mount namespace where one library is hidden: an
# overlay over the library's folder with a whiteout for it, so the dynamic loader really cannot
# find it (as on a machine without the package), and nothing outside the namespace changes.
HIDE_AND_RUN = """
set -eu
library="$1"; upper="$2"; work="$3"; shift 3
mknod "$upper/$(basename "$library")" c 0 0
mount -t overlay overlay -o "lowerdir=$(dirname "$library"),upperdir=$upper,workdir=$work" \
    "$(dirname "$library")"
exec "$@"
"""


@pytest.fixture
def without_library(tmp_path: Path):
    """`run(command, env)`: the command on this machine with libxcb-cursor.so.0 hidden."""
    library = _library_path(HIDDEN_LIBRARY)
    unshare = shutil.which("unshare")

    def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        if library is None:  # this machine lacks it already
            return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        upper, work = tmp_path / "upper", tmp_path / "work"
        upper.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        for leftover in upper.iterdir():
            leftover.unlink()
        wrapped = [unshare, "--mount", "--", "bash", "-c", HIDE_AND_RUN, "hide"]
        return subprocess.run(
            [*wrapped, str(library), str(upper), str(work), *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    if library is not None:
        if unshare is None or os.geteuid() != 0:
            pytest.skip("hiding a library needs root and unshare (a private mount namespace)")
        probe = run(["true"], dict(os.environ))
        if probe.returncode != 0:
            pytest.skip(f"no private mount namespace with an overlay here: {probe.stderr.strip()}")
    return run


def test_a_missing_xcb_library_is_named_with_the_apt_line_instead_of_qts_abort(
    without_library, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "xcb",
        "DISPLAY": ":97",  # nowhere: the library check comes first
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    env.pop("QT_QPA_PLATFORM_PLUGIN_PATH", None)
    env.pop("QT_PLUGIN_PATH", None)

    # What the user got before: Qt itself fails to load its platform plugin, and aborts.
    bare_qt = without_library(
        [sys.executable, "-c", "from PySide6.QtWidgets import QApplication; QApplication([])"],
        env,
    )
    assert bare_qt.returncode != 0
    assert "xcb" in bare_qt.stderr

    app = without_library(
        [sys.executable, "-m", "flowerdemo", "--url", "127.0.0.1:9", "--mode", "auto"], env
    )
    output = app.stdout + app.stderr
    assert app.returncode == 2, output
    assert "Traceback" not in output
    assert "qt.qpa" not in output  # Qt was never asked
    paragraph = app.stderr.strip()
    assert "\n" not in paragraph  # one paragraph
    assert paragraph.startswith("flowerdemo cannot open its window:")
    assert HIDDEN_LIBRARY in paragraph
    assert "libxcb-cursor0" in paragraph
    assert paragraph.endswith(read_platform_packages().install_line())


def test_a_display_that_is_not_there_is_explained(tmp_path: Path) -> None:
    # No X server listens on display 97 here: the same connection Qt's xcb plugin would open.
    error = x_display_error(":97")
    assert error is not None and "':97'" in error
    paragraph = explain([PlatformVerdict("xcb", False, error)], read_platform_packages())
    assert "xhost +SI:localuser:" in paragraph and "--headless" in paragraph
    unset = check_display({"QT_QPA_PLATFORM": "xcb", "PATH": os.environ.get("PATH", "")})
    assert unset.paragraph is not None
    assert "DISPLAY" in unset.paragraph or "libxcb" in unset.paragraph


def test_platforms_the_check_does_not_know_are_left_to_qt() -> None:
    result = check_display({"QT_QPA_PLATFORM": "offscreen"})
    assert result.paragraph is None and result.qt_platform is None


def test_a_wayland_session_uses_wayland_when_it_works_and_falls_back_to_xcb(monkeypatch) -> None:
    # The decision alone, over verdicts given here (no compositor on the test machine).
    verdicts = {"wayland": True, "xcb": True}

    def judged(platform: str, _environ: object) -> PlatformVerdict:
        usable = verdicts[platform]
        return PlatformVerdict(platform, usable, "" if usable else f"{platform} is broken")

    monkeypatch.setattr(display_check, "check_platform", judged)
    session = {"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"}
    assert check_display(session).qt_platform == "wayland;xcb"
    verdicts["wayland"] = False
    assert check_display(session).qt_platform == "xcb"
    chosen = check_display({**session, "QT_QPA_PLATFORM": "wayland"})
    assert chosen.qt_platform == "xcb" and "wayland is broken" in chosen.notes[0]
    verdicts["xcb"] = False
    failed = check_display(session)
    assert failed.paragraph is not None
    assert "wayland is broken" in failed.paragraph and "xcb is broken" in failed.paragraph


def test_a_wayland_session_without_a_compositor_socket_is_not_wayland(tmp_path: Path) -> None:
    verdict = display_check.check_platform(
        "wayland", {"WAYLAND_DISPLAY": "wayland-7", "XDG_RUNTIME_DIR": str(tmp_path)}
    )
    assert verdict.usable is False
    assert "Wayland compositor" in verdict.problem or "libwayland" in verdict.problem


def test_the_readme_quick_start_names_the_same_packages() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert read_platform_packages().install_line() in quick_start.splitlines()


@pytest.fixture
def x_display():
    """A real X server (Xvfb) for the test, on a display it picks itself."""
    if shutil.which("Xvfb") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("Xvfb not found (apt xvfb)")
        pytest.skip("Xvfb not found (apt xvfb)")
    sys.path.insert(0, str(REPO / "packaging"))
    try:
        import xvfb_smoke
    finally:
        sys.path.remove(str(REPO / "packaging"))
    server, display = xvfb_smoke.start_xvfb("640x480x24")
    try:
        yield display
    finally:
        xvfb_smoke.stop(server)


def _xcb_libraries_complete() -> bool:
    verdict = display_check.check_platform("xcb", {**os.environ, "DISPLAY": ""})
    return not verdict.missing_libraries


def test_an_x_display_that_is_not_there_stops_with_a_paragraph(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "xcb",
        "DISPLAY": ":97",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    app = subprocess.run(
        [sys.executable, "-m", "flowerdemo", "--url", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert app.returncode == 2, app.stdout + app.stderr
    assert "Traceback" not in app.stdout + app.stderr
    paragraph = app.stderr.strip()
    assert "\n" not in paragraph and paragraph.startswith("flowerdemo cannot open its window:")
    if _xcb_libraries_complete():
        assert "':97'" in paragraph and "xhost +SI:localuser:" in paragraph


def test_a_chosen_wayland_without_a_compositor_falls_back_to_xcb(x_display, tmp_path) -> None:
    if not _xcb_libraries_complete():
        pytest.skip("Qt's xcb platform lacks system libraries here")
    runtime = tmp_path / "runtime"  # no Wayland socket in it
    runtime.mkdir(mode=0o700)
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "wayland",
        "WAYLAND_DISPLAY": "wayland-0",
        "XDG_RUNTIME_DIR": str(runtime),
        "DISPLAY": x_display,
    }
    probe = (
        "from flowerdemo.display_check import prepare_display\n"
        "assert prepare_display()\n"
        "from PySide6.QtWidgets import QApplication\n"
        "print('platform', QApplication([]).platformName())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "platform xcb" in result.stdout
    assert "wayland platform cannot start here" in result.stderr
    assert "using xcb" in result.stderr

    # Without the check, Qt itself gives up on the same machine.
    bare = subprocess.run(
        [sys.executable, "-c", probe.split("\n", 2)[2]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bare.returncode != 0


def test_a_display_that_goes_away_under_the_window_is_said_plainly(tmp_path) -> None:
    """A booth's forwarded X display can vanish while the app runs (the host logs out): the
    app says what happened in one line and exits 1, with no traceback."""
    if not _xcb_libraries_complete():
        pytest.skip("Qt's xcb platform lacks system libraries here")
    if shutil.which("Xvfb") is None or shutil.which("xwininfo") is None:
        pytest.skip("Xvfb or xwininfo not found (apt xvfb x11-utils)")
    sys.path.insert(0, str(REPO / "packaging"))
    try:
        import xvfb_smoke
    finally:
        sys.path.remove(str(REPO / "packaging"))
    server, display = xvfb_smoke.start_xvfb("800x600x24")
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "xcb",
        "DISPLAY": display,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    # A server address nobody answers: the window opens and keeps retrying, no stack to start.
    app = subprocess.Popen(
        [sys.executable, "-m", "flowerdemo", "--url", "127.0.0.1:9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # Wait until the window is mapped on that display (x11-utils' xwininfo lists it).
        def window_shown() -> bool:
            tree = subprocess.run(
                ["xwininfo", "-root", "-tree"],
                capture_output=True,
                text=True,
                env=env,
                timeout=10,
            )
            return "flowerdemo" in tree.stdout.lower()

        deadline = time.monotonic() + 60
        while app.poll() is None and not window_shown() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert app.poll() is None, app.stderr.read() if app.stderr else ""
        xvfb_smoke.stop(server)
        _, stderr = app.communicate(timeout=60)
    finally:
        xvfb_smoke.stop(server)
        if app.poll() is None:
            app.kill()
            app.wait()
    assert "Traceback" not in stderr
    assert app.returncode == 1, stderr
    assert "connection to the display was lost" in stderr
