"""Start a GUI command on a fresh Xvfb display with Qt's xcb platform, screenshot it, judge it.

This is the booth container's proof and the frozen build's smoke start: a real X server, the real
xcb platform plugin (not offscreen), so a missing system library makes Qt abort instead of
passing silently.

    python packaging/xvfb_smoke.py --screenshot shot.png -- flowerdemo --url HOST:PORT --mode auto

Exit 0 when the command is still running after --wait seconds and the screenshot is not blank
(at least --min-colours distinct colours: text and photos give hundreds, an empty X root one).
Prints one line of figures either way. Needs apt `xvfb` and `imagemagick` (for `import`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

XVFB_START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Screenshot:
    path: Path
    width: int
    height: int
    colours: int
    # Share of pixels that are not the black root window (Xvfb runs with -br): how much of the
    # screen the app actually drew on.
    covered: float


def start_xvfb(screen: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start Xvfb on the first free display; Xvfb itself picks it and writes it to -displayfd."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise SystemExit("Xvfb not found: install the apt package 'xvfb'")
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", screen, "-br", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_end)
    deadline = time.monotonic() + XVFB_START_TIMEOUT_S
    received = b""
    with os.fdopen(read_end, "rb") as pipe:
        while not received.endswith(b"\n"):
            if time.monotonic() > deadline or process.poll() is not None:
                stop(process)
                raise SystemExit(f"Xvfb did not report a display within {XVFB_START_TIMEOUT_S} s")
            chunk = pipe.read(1)
            if not chunk:
                break
            received += chunk
    display_number = received.decode().strip()
    if not display_number.isdigit():
        stop(process)
        raise SystemExit(f"Xvfb reported no display number (got {received!r})")
    return process, f":{display_number}"


def stop(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Stop a process we started in its own session, and whatever it started."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def take_screenshot(display: str, target: Path) -> Screenshot:
    importer = shutil.which("import")
    if importer is None:
        raise SystemExit("'import' not found: install the apt package 'imagemagick'")
    subprocess.run(
        [importer, "-display", display, "-window", "root", str(target)],
        check=True,
        timeout=30,
        capture_output=True,
    )
    with Image.open(target) as image:
        rgb = image.convert("RGB")
        background = (0, 0, 0)
        colours = rgb.getcolors(maxcolors=1 << 24) or []
        total = rgb.width * rgb.height
        same_as_background = sum(count for count, colour in colours if colour == background)
        return Screenshot(
            path=target,
            width=rgb.width,
            height=rgb.height,
            colours=len(colours),
            covered=1.0 - same_as_background / total,
        )


def run_smoke(
    command: list[str], screenshot: Path, wait_s: float, screen: str, min_colours: int
) -> int:
    xvfb, display = start_xvfb(screen)
    app: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="xvfb-smoke-") as workdir:
            log_path = Path(workdir) / "command.log"
            with log_path.open("wb") as log_file:
                environment = dict(os.environ)
                environment.update(
                    {"DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "QT_X11_NO_MITSHM": "1"}
                )
                started = time.monotonic()
                app = subprocess.Popen(
                    command,
                    env=environment,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                while time.monotonic() - started < wait_s and app.poll() is None:
                    time.sleep(0.2)
                exit_code = app.poll()
                shot = take_screenshot(display, screenshot)
                elapsed = time.monotonic() - started
            state = "running" if exit_code is None else f"exited with {exit_code}"
            print(
                f"xvfb-smoke: display {display} {screen}; command {state} after {elapsed:.1f} s; "
                f"screenshot {shot.path} {shot.width}x{shot.height}, {shot.colours} colours, "
                f"{shot.covered:.0%} of the screen drawn"
            )
            failures = []
            if exit_code is not None:
                failures.append(f"the command exited with {exit_code} within {wait_s} s")
            if shot.colours < min_colours:
                failures.append(
                    f"the screenshot is blank or nearly so ({shot.colours} colours, "
                    f"need {min_colours})"
                )
            if not failures:
                return 0
            log_tail = log_path.read_text(errors="replace")[-4000:]
            print("xvfb-smoke: FAILED: " + "; ".join(failures), file=sys.stderr)
            print(f"--- output of {command[0]} (last 4000 characters) ---", file=sys.stderr)
            print(log_tail, file=sys.stderr)
            return 1
    finally:
        if app is not None:
            stop(app)
        stop(xvfb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--wait", type=float, default=8.0, help="seconds before the screenshot")
    parser.add_argument("--screen", default="1280x800x24", help="Xvfb screen WxHxDEPTH")
    parser.add_argument("--min-colours", type=int, default=32)
    parser.add_argument("command", nargs="+", help="the command to start, after --")
    args = parser.parse_args(argv)
    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
    return run_smoke(args.command, args.screenshot, args.wait, args.screen, args.min_colours)


if __name__ == "__main__":
    raise SystemExit(main())
