"""The README's Python example runs as printed and Kiln's top class is onnxruntime's."""

from __future__ import annotations

import contextlib
import io
import os
import re

from conftest import REPO


def test_the_readme_example_prints_onnxruntimes_top_class() -> None:
    text = (REPO / "README.md").read_text()
    marker = text.index("<!-- python-example")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert block, "the README's python example is missing"
    code = block.group(1)
    assert len(code.strip().splitlines()) == 5, "the README promises a 5-line script"
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    m = re.fullmatch(r"kiln: (\d+) onnxruntime: (\d+)\n", out.getvalue())
    assert m, out.getvalue()
    assert m.group(1) == m.group(2)
