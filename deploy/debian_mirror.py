"""Print the Debian mirror this machine's apt uses, for debootstrap (deploy/build-image.sh).

    python3 deploy/debian_mirror.py [--root /]

Reads /etc/apt/sources.list and /etc/apt/sources.list.d/*.list (one-line format:
``deb [options] URI SUITE COMPONENT...``) and /etc/apt/sources.list.d/*.sources (deb822
stanzas: ``Types:``, ``URIs:``, ``Suites:``, ``Components:``, ``Enabled:``). The mirror is
the first enabled ``deb`` source whose suite is this machine's release codename
(``VERSION_CODENAME`` in /etc/os-release) and whose components include ``main``: the
Debian archive itself, not its security or updates suites, nor a third-party repository
(theirs use suites such as ``nodistro`` or components other than ``main``). No mirror is
named here: an image is built from whatever archive the machine already trusts.
Exits 1, saying so, when there is none; DEBIAN_MIRROR then names one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def one_line_sources(text: str) -> Iterator[Source]:
    """``deb [arch=amd64 signed-by=...] http://host/debian bookworm main contrib``."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.startswith("["):
            _, _, rest = rest.partition("]")
        fields = rest.split()
        if len(fields) >= 2:
            yield Source((kind,), (fields[0],), (fields[1],), tuple(fields[2:]))


def deb822_sources(text: str) -> Iterator[Source]:
    """Stanzas separated by blank lines; a field may continue on indented lines."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
                continue
            key, sep, value = raw.partition(":")
            if not sep:
                key = ""
                continue
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        yield Source(tuple(fields.get("types", "").split()), tuple(fields.get("uris", "").split()),
                     tuple(fields.get("suites", "").split()),
                     tuple(fields.get("components", "").split()))


def apt_sources(root: Path) -> Iterator[Source]:
    apt = root / "etc" / "apt"
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in files:
        if path.is_file():
            yield from one_line_sources(path.read_text(errors="replace"))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        yield from deb822_sources(path.read_text(errors="replace"))


def codename(root: Path) -> str | None:
    try:
        text = (root / "etc" / "os-release").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"') or None
    return None


def debian_mirror(root: Path = Path("/")) -> str | None:
    """The URI of the Debian archive in this machine's apt sources, or None."""
    release = codename(root)
    for source in apt_sources(root):
        if ("deb" in source.types and release in source.suites and "main" in source.components):
            for uri in source.uris:
                if uri.startswith(("http://", "https://")):
                    return uri.rstrip("/")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mirror = debian_mirror(args.root)
    if mirror is None:
        sys.stderr.write(
            "debian_mirror: no Debian archive for this release (suite "
            f"{codename(args.root)!r}, component main) in {args.root / 'etc/apt'}'s sources; "
            "set DEBIAN_MIRROR to a Debian mirror's URL\n")
        return 1
    sys.stdout.write(mirror + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
