"""The package's public face: every name in ``informer_audit.__all__`` resolves, lazily."""

from __future__ import annotations

import ast
import importlib
import inspect
import re

import pytest

import informer_audit
from conftest import REPO, run_python
from informer_audit import errors


@pytest.mark.parametrize("name", informer_audit.__all__)
def test_every_public_name_resolves_to_its_module_attribute(name: str) -> None:
    value = getattr(informer_audit, name)
    if name != "__version__":
        module = importlib.import_module(f"informer_audit.{informer_audit._EXPORTS[name]}")
        assert value is getattr(module, name)
        assert name in dir(informer_audit)


def test_every_error_and_warning_is_public() -> None:
    classes = {
        n for n, v in vars(errors).items() if inspect.isclass(v) and v.__module__ == errors.__name__
    }
    assert classes and classes <= set(informer_audit.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        informer_audit.nope  # noqa: B018
    assert not hasattr(informer_audit, "nope")


def test_import_informer_audit_loads_neither_onnxruntime_nor_torch(tmp_path) -> None:
    code = (
        "import sys, informer_audit; informer_audit.ModelCard; informer_audit.ModelSpecError; "
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    out = run_python("-c", code, cwd=tmp_path, check=True)  # the installed package
    assert out.stdout.strip() == "[]"


def test_the_library_guide_imports_only_public_names() -> None:
    text = (REPO / "docs" / "library.md").read_text(encoding="utf-8")
    imported = []
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "informer_audit":
                imported += [alias.name for alias in node.names]
    assert imported and set(imported) <= set(informer_audit.__all__)
