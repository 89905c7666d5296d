"""Can Qt open a window here? Checked before Qt is loaded, so a missing system library or an
unreachable display is explained in one paragraph instead of Qt's abort ("could not load the Qt
platform plugin ... Aborted (core dumped)").

What is checked, for the platform Qt would use (`QT_QPA_PLATFORM`, else the session's):
- the platform plugin (`libqxcb.so`, `libqwayland.so`), where Qt looks for it;
- every system library it links, directly or through Qt's own libraries, resolves: the dynamic
  loader lists them (`ldd`), so LD_LIBRARY_PATH, the plugin's RUNPATH and the loader cache count
  exactly as they will when Qt loads it;
- xcb: `DISPLAY` is set and an X connection opens (through libxcb, as Qt's plugin does);
  wayland: the compositor's socket exists.

A Wayland session without a usable wayland plugin falls back to xcb (XWayland) when that works.
Platforms this module does not know (offscreen, vnc, eglfs, ...) are left to Qt. When a check
cannot decide (no `ldd`, a plugin in an unusual place), it does not stand in Qt's way.

The package names come from `flowerdemo/platform_packages.txt`, the list the booth image's
install script (packaging/docker/install-client-deps.sh) installs: one source for both.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

PACKAGE_LIST = "platform_packages.txt"
CHECKED_PLATFORMS = ("xcb", "wayland")
BUNDLED_LIBRARIES = ("libQt6", "libicu", "libpyside6", "libshiboken6")
LIST_TIMEOUT_S = 10.0
X_CONNECT_TIMEOUT_S = 3.0
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PlatformPackages:
    """The apt packages the window needs, and which package provides each library Qt loads."""

    packages: tuple[str, ...]
    by_library: Mapping[str, str]

    def install_line(self) -> str:
        return "sudo apt-get install " + " ".join(self.packages)


def read_platform_packages(text: str | None = None) -> PlatformPackages:
    """Parse the package list (the packaged file when `text` is None)."""
    if text is None:
        try:
            text = (resources.files("flowerdemo") / PACKAGE_LIST).read_text(encoding="utf-8")
        except OSError:
            text = ""
    packages: list[str] = []
    by_library: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        packages.append(words[0])
        for library in words[1:]:
            by_library[library] = words[0]
    return PlatformPackages(tuple(packages), by_library)


@dataclass
class PlatformVerdict:
    """What was found out about one platform plugin."""

    platform: str
    usable: bool | None
    """True: every check passed; False: Qt would fail (see `problem`); None: not checked."""
    problem: str = ""
    missing_libraries: tuple[str, ...] = ()


@dataclass
class DisplayCheck:
    """The outcome: a platform list to hand Qt, or a paragraph for the user."""

    qt_platform: str | None
    """The value for QT_QPA_PLATFORM (None: leave it as it is)."""
    paragraph: str | None = None
    """Set when Qt cannot open a window here: the explanation, ready to print."""
    notes: list[str] = field(default_factory=list)
    """One-line remarks for the terminal (a fallback that was taken)."""
    verdicts: list[PlatformVerdict] = field(default_factory=list)


def pyside_plugin_dirs(environ: Mapping[str, str]) -> list[Path]:
    """The folders Qt searches for platform plugins, in Qt's order."""
    folders: list[Path] = []
    explicit = environ.get("QT_QPA_PLATFORM_PLUGIN_PATH")
    if explicit:
        folders.append(Path(explicit))
    for entry in environ.get("QT_PLUGIN_PATH", "").split(os.pathsep):
        if entry:
            folders.append(Path(entry) / "platforms")
    spec = importlib.util.find_spec("PySide6")
    if spec is not None and spec.origin:
        folders.append(Path(spec.origin).parent / "Qt" / "plugins" / "platforms")
    return folders


def find_plugins(platform: str, environ: Mapping[str, str]) -> list[Path]:
    """Every copy of the platform's plugin where Qt looks, in the order Qt tries them (Qt falls
    back to the next when one cannot load)."""
    found = []
    for folder in pyside_plugin_dirs(environ):
        candidate = folder / f"libq{platform}.so"
        if candidate.is_file() and candidate not in found:
            found.append(candidate)
    return found


def missing_libraries(library: Path, environ: Mapping[str, str]) -> tuple[str, ...] | None:
    """Libraries `library` needs that the dynamic loader cannot find (directly or through its
    own dependencies); None when the loader could not be asked."""
    lister = _loader_lister()
    if lister is None:
        return None
    try:
        listed = subprocess.run(
            [*lister, str(library)],
            capture_output=True,
            text=True,
            timeout=LIST_TIMEOUT_S,
            env=dict(environ),
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = _NOT_FOUND.findall(listed.stdout)
    if found:
        return tuple(dict.fromkeys(found))
    if listed.returncode != 0:
        return None
    return ()


def _loader_lister() -> list[str] | None:
    """A command that lists a shared library's dependencies as the loader resolves them."""
    ldd = shutil.which("ldd")
    if ldd is not None:
        return [ldd]
    for pattern in ("/lib64/ld-linux*.so*", "/lib/ld-linux*.so*"):
        for loader in sorted(Path("/").glob(pattern.lstrip("/"))):
            return [str(loader), "--list"]
    return None


def x_display_error(display: str) -> str | None:
    """Why an X connection to `display` cannot be opened, or None when it can (or when libxcb
    itself is unavailable, which the library check reports)."""
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return None
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.restype = ctypes.c_int
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    outcome: list[int] = []

    def connect() -> None:
        connection = xcb.xcb_connect(display.encode(), None)
        outcome.append(xcb.xcb_connection_has_error(connection))
        xcb.xcb_disconnect(connection)

    # A TCP display on an unreachable host can take minutes to fail: do not wait for it.
    worker = threading.Thread(target=connect, name="x-display-probe", daemon=True)
    worker.start()
    worker.join(X_CONNECT_TIMEOUT_S)
    if not outcome or outcome[0] == 0:
        return None
    return (
        f"the X display '{display}' (DISPLAY) cannot be opened: no X server is listening there, "
        "or it refuses this user"
    )


def wayland_socket(environ: Mapping[str, str]) -> Path | None:
    name = environ.get("WAYLAND_DISPLAY") or "wayland-0"
    path = Path(name)
    if not path.is_absolute():
        runtime = environ.get("XDG_RUNTIME_DIR")
        if not runtime:
            return None
        path = Path(runtime) / name
    return path if path.exists() else None


def check_platform(platform: str, environ: Mapping[str, str]) -> PlatformVerdict:
    if platform not in CHECKED_PLATFORMS:
        return PlatformVerdict(platform, None)
    plugins = find_plugins(platform, environ)
    if not plugins:
        # An unusual layout (a frozen build, a distribution's own Qt): Qt knows where to look.
        return PlatformVerdict(platform, None)
    missing: tuple[str, ...] | None = None
    for plugin in plugins:
        missing = missing_libraries(plugin, environ)
        if missing is not None:
            # Qt's own libraries come with the client and are loaded by the time Qt loads the
            # plugin, wherever the loader would look for them: only the system's count.
            missing = tuple(m for m in missing if not m.startswith(BUNDLED_LIBRARIES))
        if not missing:
            break
    if missing:
        return PlatformVerdict(
            platform,
            False,
            f"Qt's {platform} platform plugin needs {_join(missing)}, "
            "which this system does not have",
            missing,
        )
    if platform == "xcb":
        display = environ.get("DISPLAY", "")
        if not display:
            return PlatformVerdict(
                platform,
                False,
                "DISPLAY is not set, so Qt's xcb platform has no X server to draw on",
            )
        error = x_display_error(display)
        if error is not None:
            return PlatformVerdict(platform, False, error)
    elif wayland_socket(environ) is None:
        return PlatformVerdict(
            platform,
            False,
            "Qt's wayland platform finds no Wayland compositor (WAYLAND_DISPLAY, XDG_RUNTIME_DIR)",
        )
    return PlatformVerdict(platform, True if missing is not None else None)


def requested_platforms(environ: Mapping[str, str]) -> tuple[list[str], bool]:
    """The platform names to try in order, and whether the user chose them (QT_QPA_PLATFORM)."""
    chosen = environ.get("QT_QPA_PLATFORM", "").strip()
    if chosen:
        names = [entry.split(":", 1)[0].strip() for entry in chosen.split(";")]
        return [name for name in names if name], True
    wayland_session = environ.get("XDG_SESSION_TYPE") == "wayland" or bool(
        environ.get("WAYLAND_DISPLAY")
    )
    return (["wayland", "xcb"] if wayland_session else ["xcb"]), False


def check_display(
    environ: Mapping[str, str], packages: PlatformPackages | None = None
) -> DisplayCheck:
    """Decide which platform Qt should use here, or explain why none can work."""
    names, chosen = requested_platforms(environ)
    verdicts = [check_platform(name, environ) for name in names]
    for verdict in verdicts:
        if verdict.usable is not False:
            # The first platform that works (or that we cannot judge) is Qt's first choice.
            if chosen:
                return DisplayCheck(None, verdicts=verdicts)
            position = verdicts.index(verdict)
            return DisplayCheck(";".join(names[position:]), verdicts=verdicts)
    if "xcb" not in names and "wayland" in names:
        # A chosen Wayland that cannot work: XWayland often can.
        fallback = check_platform("xcb", environ)
        verdicts.append(fallback)
        if fallback.usable is not False:
            note = (
                f"flowerdemo: Qt's wayland platform cannot start here ({verdicts[0].problem}); "
                "using xcb (X11 through XWayland) instead."
            )
            return DisplayCheck("xcb", notes=[note], verdicts=verdicts)
    return DisplayCheck(
        None, paragraph=explain(verdicts, packages or read_platform_packages()), verdicts=verdicts
    )


def explain(verdicts: Sequence[PlatformVerdict], packages: PlatformPackages) -> str:
    """One paragraph: what is wrong, which package fixes it, and last the whole install line
    (last, with no full stop after it, so it can be copied as it is)."""
    first = verdicts[0]
    sentences = [f"flowerdemo cannot open its window: {first.problem}."]
    for other in verdicts[1:]:
        sentences.append(f"Nor can it fall back: {other.problem}.")
    missing = [library for verdict in verdicts for library in verdict.missing_libraries]
    if missing and packages.packages:
        known = sorted({packages.by_library[m] for m in missing if m in packages.by_library})
        if known:
            which = "the package" if len(known) == 1 else "the packages"
            provides = "provides it" if len(known) == 1 else "provide them"
            sentences.append(f"On Debian or Ubuntu {which} {_join(known)} {provides}.")
        sentences.append(
            "Without a window, --headless runs in the terminal. "
            "Every package the window needs, in one line: " + packages.install_line()
        )
    elif missing:
        sentences.append("Install them with your system's package manager, or use --headless.")
    elif any("DISPLAY" in v.problem or "X display" in v.problem for v in verdicts):
        sentences.append(
            "Start it from a desktop session, or point DISPLAY at a running X server; "
            "from a container, share the X socket and allow this user on the host with "
            "xhost +SI:localuser:$(id -un). Without a screen, --headless runs in the terminal."
        )
    else:
        sentences.append(
            "Reinstall the client (pip install --force-reinstall flowerdemo), "
            "or run it with --headless."
        )
    return " ".join(sentences)


def prepare_display(
    environ: MutableMapping[str, str] | None = None, stream: TextIO | None = None
) -> bool:
    """Run the check and apply its platform choice to `environ` (default os.environ) before Qt
    loads. False (after printing the paragraph to stderr) when the window cannot open."""
    environ = os.environ if environ is None else environ
    out = sys.stderr if stream is None else stream
    result = check_display(environ)
    for note in result.notes:
        print(note, file=out)
    if result.paragraph is not None:
        print(result.paragraph, file=out)
        return False
    if result.qt_platform is not None:
        environ["QT_QPA_PLATFORM"] = result.qt_platform
    return True


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
