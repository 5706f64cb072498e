"""The optional C extension (wsproxy.core._scan); everything else is in pyproject.toml.

The frame scanner has a compiled twin of its inner loop (wsproxy/core/scan.py says
why and what). It is built when a C compiler and Python's headers are there; when
not, the build says so in its log and goes on: wsproxy then runs the same logic in
Python (``wsproxy --version`` says which: "speedups: c" or "speedups: python").
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: no compiler means pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any failure to build means: no speedups
            self._note(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._note(exc)

    @staticmethod
    def _note(exc: BaseException) -> None:
        sys.stderr.write(
            f"wsproxy: the C speedups were not built ({type(exc).__name__}: {exc}); "
            "wsproxy will use its pure-Python frame scanner (speedups: python)\n"
        )


setup(
    ext_modules=[
        Extension("wsproxy.core._scan", ["wsproxy/core/_scan.c"], optional=True),
        # The heads of an upgrade and of a backend's 101 (wsproxy.core.handshake).
        Extension("wsproxy.core._heads", ["wsproxy/core/_heads.c"], optional=True),
        # The connection.closed line and the log clock (wsproxy.log).
        Extension("wsproxy._lines", ["wsproxy/_lines.c"], optional=True),
        # The engine's socket layer: links (wsproxy.io.links).
        Extension("wsproxy.io._links", ["wsproxy/io/_links.c"], optional=True),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
