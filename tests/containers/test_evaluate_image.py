"""The evaluate image has every package its code imports: the local venv has them all (requirements/ml.txt), so a
module missing from containers/evaluate/requirements.txt fails only in the image, on AWS (peft was, once)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

EVALUATE = Path(__file__).resolve().parents[2] / "containers" / "evaluate"
# Imported but not pip-installed by requirements.txt: the base image's (torch), the vLLM image's (vllm, only through
# vllm_engine.py, which checks it is there first), and the repository's own code.
PROVIDED = {"torch", "vllm", "containers"}


def _imported_packages(source: Path) -> set[str]:
    tree = ast.parse(source.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):  # inside functions too: the heavy imports are made in main()
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__"}


def _pinned(requirements: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in requirements.read_text().splitlines())
    return {line.split("==")[0].strip().lower().replace("-", "_") for line in lines if line}


def test_every_package_the_evaluate_code_imports_is_installed_in_its_image() -> None:
    # GIVEN every third-party package the evaluate job's modules import, at the top or inside a function
    imported = set().union(*(_imported_packages(source) for source in EVALUATE.glob("*.py"))) - PROVIDED
    assert {"transformers", "jsonschema", "peft"} <= imported  # the scan sees what it must
    # THEN the image's requirements pin each of them
    pinned = _pinned(EVALUATE / "requirements.txt")
    assert sorted(name for name in imported if name.lower() not in pinned) == []
