# SPDX-License-Identifier: Apache-2.0
"""Which OpenWrt packages the daemon's Python imports need.

OpenWrt splits CPython's standard library into packages (packages feed,
lang/python/python3/files/python3-package-*.mk): python3-light is the interpreter plus most
of the library, and the big or rarely used parts are packages of their own. An import of a
module that lives in one of those fails at run time on the router, not at install time, so
the .ipk's Depends is worked out from the daemon's actual imports (scanned with ast, also
inside functions) plus the modules its contract implies, through the table below.
"""

import ast
import sys
from collections.abc import Iterable

from pkgformats.archive import Entry
from pkgformats.errors import BuildError

# The daemon needs Python 3.11 (datetime.UTC, ...); OpenWrt 22.03 had 3.10.
PYTHON_LIGHT = "python3-light (>= 3.11)"

# Dotted module prefix -> OpenWrt packages beyond python3-light that make it importable.
# OpenWrt's own package dependencies are not repeated unless the import needs them directly.
SPLIT_MODULES: dict[str, tuple[str, ...]] = {
    "asyncio": ("python3-asyncio",),
    "cgi": ("python3-cgi",),
    "cgitb": ("python3-cgi",),
    "ctypes": ("python3-ctypes",),
    "curses": ("python3-ncurses",),
    "dbm": ("python3-dbm",),
    "decimal": ("python3-decimal",),
    "email": ("python3-email",),
    # http.client and http.server parse headers with email.parser and URLs with urllib.parse.
    "http": ("python3-email", "python3-urllib"),
    "lib2to3": ("python3-lib2to3",),
    "logging": ("python3-logging",),
    "lzma": ("python3-lzma",),
    "multiprocessing": ("python3-multiprocessing",),
    "pydoc": ("python3-pydoc",),
    "pyexpat": ("python3-xml",),
    "readline": ("python3-readline",),
    "sqlite3": ("python3-sqlite3",),
    # ssl.py is in python3-light but its _ssl extension (and _hashlib) are not.
    "ssl": ("python3-openssl",),
    "unicodedata": ("python3-codecs",),
    "unittest": ("python3-unittest",),
    "urllib": ("python3-urllib",),
    "uuid": ("python3-uuid",),
    "venv": ("python3-venv",),
    "webbrowser": ("python3-webbrowser",),
    "xml": ("python3-xml",),
    "xmlrpc": ("python3-xml",),
}

# Standard modules that no OpenWrt package provides.
NOT_ON_OPENWRT = frozenset({"ensurepip", "idlelib", "tkinter", "turtle", "turtledemo"})

# What the daemon's contract needs even before the code importing it is written: syslog
# logging, mutual TLS, HTTP(S) to the supervisor, DASH (XML) manifests for the OTT test.
CONTRACT_MODULES = ("logging.handlers", "ssl", "http.client", "urllib.parse",
                    "xml.etree.ElementTree")

OWN_PACKAGE = "probe_daemon"


def imported_modules(source: str, filename: str) -> set[str]:
    """Absolute module names a Python source imports, wherever the import statement is."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        raise BuildError(f"{filename}:{exc.lineno}: {exc.msg}: fix the syntax error before "
                         "packaging") from None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def packages_for(module: str, where: str = "") -> tuple[str, ...]:
    """The split packages one module needs; () for python3-light; BuildError if none can."""
    root = module.split(".")[0]
    if root == OWN_PACKAGE:
        return ()
    if root not in sys.stdlib_module_names:
        raise BuildError(f"{where or 'the daemon'} imports {module}, which is not in Python's "
                         "standard library: the daemon must stay stdlib-only, remove it")
    if root in NOT_ON_OPENWRT:
        raise BuildError(f"{where or 'the daemon'} imports {module}, which OpenWrt does not "
                         "package: remove the import")
    best = max((key for key in SPLIT_MODULES if module == key or module.startswith(key + ".")),
               key=len, default=None)
    return SPLIT_MODULES[best] if best else ()


def python_depends(entries: Iterable[Entry]) -> list[str]:
    """Depends entries for the .ipk: python3-light first, then the split packages, sorted."""
    needed: set[str] = set()
    for module in CONTRACT_MODULES:
        needed.update(packages_for(module, "the daemon's contract"))
    for entry in entries:
        if entry.data is None or not entry.path.endswith(".py"):
            continue
        source = entry.data.decode("utf-8")
        for module in sorted(imported_modules(source, entry.path)):
            needed.update(packages_for(module, entry.path))
    return [PYTHON_LIGHT, *sorted(needed)]
