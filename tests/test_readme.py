"""Every Python snippet of README.md runs, in order, in one namespace (as a reader pastes them)."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def snippets() -> list[str]:
  with open(README, encoding="utf-8") as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


@pytest.mark.slow
def test_the_readme_has_snippets_and_every_one_runs():
  blocks = snippets()
  assert len(blocks) >= 4
  namespace = {}
  for i, block in enumerate(blocks):
    try:
      code = compile(block, f"README.md python block {i + 1}", "exec")
      exec(code, namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"README.md python block {i + 1} fails: {type(e).__name__}: {e}\n{block}")
