"""The booth's packaging: the container's documented `docker run` line (a non-root user, no
capabilities, X access for one user, configured by -e alone), the image's entry point, and the
booth PC's systemd user unit (systemd-analyze verify)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from flowerdemo.__main__ import _client_parser
from flowerdemo.env_settings import environment_defaults, settable_actions

REPO = Path(__file__).resolve().parent.parent
PACKAGING_README = REPO / "packaging" / "README.md"
BOOTH = REPO / "packaging" / "booth"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _booth_section() -> str:
    text = PACKAGING_README.read_text(encoding="utf-8")
    return text.split("## Booth container", 1)[1].split("\n## ", 1)[0]


def _docker_run_words() -> list[str]:
    section = _booth_section()
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if line.strip().startswith("docker run"))
    return shlex.split(line, comments=True)


def test_the_booth_container_runs_as_a_user_without_capabilities_configured_by_env() -> None:
    words = _docker_run_words()
    assert "--cap-drop=ALL" in words
    assert "no-new-privileges" in words
    user = words[words.index("--user") + 1]
    assert user.startswith("$(id -u)")  # the desktop user's own uid, never root
    # The image name ends the line: no arguments, every setting comes from -e.
    assert words[-1] == "flowerdemo-client"
    variables = {
        words[index + 1].split("=", 1)[0]: words[index + 1].split("=", 1)[1]
        for index, word in enumerate(words)
        if word == "-e"
    }
    assert {"FLOWERDEMO_URL", "FLOWERDEMO_KIOSK", "DISPLAY"} <= set(variables)
    known = {name for name, _action in settable_actions(_client_parser())}
    flowerdemo_variables = {name for name in variables if name.startswith("FLOWERDEMO_")}
    assert flowerdemo_variables <= known
    _defaults, problems = environment_defaults(_client_parser(), variables)
    assert problems == []

    commands = _booth_section().split("```sh", 1)[1].split("```", 1)[0]
    assert 'xhost +SI:localuser:"$(id -un)"' in commands
    assert not re.search(r"xhost \+(local:|\s|$)", commands)  # never every local user


def test_the_image_takes_its_settings_from_the_environment() -> None:
    dockerfile = (REPO / "packaging" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    instructions = [
        line.split(None, 1)
        for line in dockerfile.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    keywords = [words[0].upper() for words in instructions]
    assert "CMD" not in keywords  # a CMD would be arguments, and arguments win over -e
    assert ["ENTRYPOINT", '["flowerdemo"]'] in [
        [k, w[1].strip()] for k, w in zip(keywords, instructions, strict=True) if len(w) > 1
    ]


def test_the_booth_pc_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (apt systemd)")
    unit = BOOTH / "flowerdemo-kiosk.service"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        [analyze, "--user", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )
    assert result.returncode == 0, result.stderr
    # systemd-analyze exits 0 on an unknown key or bad value, with a warning: none is accepted.
    assert result.stderr.strip() == "", result.stderr
    entries = dict(
        line.split("=", 1)
        for line in unit.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert entries["ExecStart"].endswith("flowerdemo --kiosk")
    assert entries["EnvironmentFile"] == "-%h/.config/flowerdemo/kiosk.env"
    assert entries["WantedBy"] == "graphical-session.target"


def test_the_booth_pc_settings_file_names_real_options() -> None:
    variables = dict(
        line.split("=", 1)
        for line in (BOOTH / "kiosk.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    known = {name for name, _action in settable_actions(_client_parser())}
    assert set(variables) <= known
    _defaults, problems = environment_defaults(_client_parser(), variables)
    assert problems == []
