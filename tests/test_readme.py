"""The README's layer example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_layer_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "lrnn.nn.CausalLM" in b]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["y"].shape == (2, 8, 64) and scope["y_t"].shape == (2, 64)
    assert scope["model"].generate(scope["tokens"][:2, :10], 5).shape == (2, 15)
