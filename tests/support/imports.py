# SPDX-License-Identifier: Apache-2.0
"""What a source file imports, for tests that keep the probe daemon standard-library only."""

import ast
from pathlib import Path


def imported_roots(path: str | Path) -> set[str]:
    """Top-level names of the modules ``path`` imports, wherever the import statement is."""
    tree = ast.parse(Path(path).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    return imported
