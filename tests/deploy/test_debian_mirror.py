"""deploy/debian_mirror.py finds the Debian archive in a machine's apt sources.

Each test lays out an /etc of its own (os-release and apt sources, both formats) under
tmp_path. The URIs are made up (``.example``): the build names no mirror of its own.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "debian_mirror.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("debian_mirror", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


debian_mirror = load().debian_mirror

DEB822 = """\
Types: deb
# a snapshot comment
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def make_root(tmp: Path, files: dict[str, str], release: str = "bookworm") -> Path:
    (tmp / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    (tmp / "etc" / "os-release").write_text(f'NAME="Debian"\nVERSION_CODENAME={release}\n')
    for name, text in files.items():
        (tmp / "etc" / "apt" / name).write_text(text)
    return tmp


def test_the_deb822_format(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert debian_mirror(root) == "http://mirror.example/debian"


def test_the_one_line_format_with_options(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"sources.list": (
        "# deb http://commented.example/debian bookworm main\n"
        "deb [signed-by=/k.gpg] https://one.example/debian-security bookworm-security main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://one.example/debian bookworm main contrib\n")})
    assert debian_mirror(root) == "https://one.example/debian"


def test_third_party_and_disabled_sources_are_passed_over(tmp_path: Path) -> None:
    root = make_root(tmp_path, {
        "sources.list.d/aa-node.sources": (
            "Types: deb\nURIs: https://node.example/node_20.x\nSuites: nodistro\n"
            "Components: main\n"),
        "sources.list.d/ab-docker.list": "deb https://docker.example/debian bookworm stable\n",
        "sources.list.d/ac-off.sources": (
            "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
            "Components: main\n"),
        "sources.list.d/debian.sources": DEB822,
        "sources.list.d/zz.list.disabled": "deb http://not-read.example/debian bookworm main\n",
    })
    assert debian_mirror(root) == "http://mirror.example/debian"


def test_the_release_comes_from_os_release(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"sources.list.d/debian.sources": DEB822.replace(
        "bookworm ", "trixie ")}, release="trixie")
    assert debian_mirror(root) == "http://mirror.example/debian"


def test_no_mirror_exits_1_and_says_what_to_set(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"sources.list": "deb https://docker.example/d bookworm stable\n"})
    assert debian_mirror(root) is None
    done = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "DEBIAN_MIRROR" in done.stderr


@pytest.mark.skipif(not Path("/etc/apt").is_dir(), reason="not a Debian-like machine")
def test_this_machine_has_one() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(("http://", "https://"))
