"""The README's Python quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_quickstart_runs(tmp_path):
    block = re.search(r"## Python quickstart\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its Python quickstart"
    code = block.group(1).replace('"runs/my-model"', repr(str(tmp_path / "my-model")))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["rollouts"].tokens.shape == (8, 5)
    assert (tmp_path / "my-model" / "model.safetensors").is_file()
