"""The README and the docs site: snippets run, no internal history, no dead references, one
version, and the site builds with Sphinx with warnings as errors."""

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

import robust_dd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read()


def snippets(path):
  return re.findall(r"```python\n(.*?)```", read(path), flags=re.S)


def run_blocks(path, blocks, namespace):
  for i, block in enumerate(blocks):
    try:
      code = compile(block, f"{path} python block {i + 1}", "exec")
      exec(code, namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"{path} python block {i + 1} fails: {type(e).__name__}: {e}\n{block}")


def test_the_readme_is_short_and_its_example_runs_on_its_own(capsys):
  assert len(read("README.md").splitlines()) <= 300
  blocks = snippets("README.md")
  assert blocks
  for block in blocks:  # Each one alone, as a reader pastes it into a fresh interpreter.
    run_blocks("README.md", [block], {})
  assert "KIP loss after 100 steps" in capsys.readouterr().out


@pytest.mark.slow
def test_every_snippet_of_the_library_guide_runs_in_order():
  blocks = snippets("docs/library.md")
  assert len(blocks) >= 4
  run_blocks("docs/library.md", blocks, {})


def texts():
  """(path, text) of everything a user reads: the README, the changelog, the docs pages, the
  scripts, the drivers, and every docstring and comment of the package."""
  paths = ["README.md", "CHANGELOG.md", *glob.glob("docs/**/*.md", root_dir=ROOT, recursive=True),
           *glob.glob("scripts/*", root_dir=ROOT), *glob.glob("experiments/*.py", root_dir=ROOT),
           *glob.glob("robust_dd/*.py", root_dir=ROOT), "setup.py", "docs/conf.py"]
  return [(p, read(p)) for p in paths if os.path.isfile(os.path.join(ROOT, p))
          and "_build" not in p]


# Words that tell the project's history instead of its state.
HISTORY = re.compile(r"\bsessions? \d|\bissues? \d|\bissue's\b|measured in session|"
                     r"\bitem \d\b|\(20\d\d-\d\d-\d\d\)|(?-i:\bOWNER\b)", re.I)


def test_no_internal_history_phrases():
  found = [f"{p}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)!r}"
           for p, text in texts() for m in HISTORY.finditer(text)]
  assert not found, "\n".join(found)


def test_the_history_check_catches_what_it_should():
  for phrase in ("as measured in session 12", "see issue 14", "Session 3", "the issue's table",
                 "(2026-12-07)", "github.com/OWNER/x"):
    assert HISTORY.search(phrase), phrase
  for phrase in ("session of training", "issues a warning", "v0.7"):
    assert not HISTORY.search(phrase), phrase


# Paths named in text that are not files of this repository: build outputs and placeholders,
# and neural-tangents' own test files.
NOT_HERE = ("docs/_build", "docs/_generated", "docs/benchmarks/NAME",
            "scripts/nt_test_suites.py:tests/")


def test_no_stale_cross_references():
  """Relative Markdown links and repository paths named in text exist; no docstring points at
  'README, Benchmarks' (measurements live in the docs)."""
  dead = []
  for path, text in texts():
    base = os.path.dirname(os.path.join(ROOT, path))
    if path.endswith(".md"):
      for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+:", target) and not os.path.exists(os.path.join(base, target)):
          dead.append(f"{path}: link {target}")
    for target in re.findall(r"\b((?:docs|scripts|tests|notebooks|experiments|robust_dd)"
                             r"/[\w./-]*\w)", text):
      if ("*" not in target and not glob.glob(os.path.join(ROOT, target) + "*")
          and not any(f"{path}:{target}".startswith(n) or target.startswith(n)
                      for n in NOT_HERE)):
        dead.append(f"{path}: path {target}")
    if path.endswith(".py") and path != "setup.py" and "README" in text:
      dead.append(f"{path}: mentions the README (measurements live in docs/)")
  assert not dead, "\n".join(dead)


def test_one_version_everywhere():
  version = robust_dd.__version__
  assert re.fullmatch(r"\d+\.\d+\.\d+", version)
  changelog = re.findall(r"^## \[([^\]]+)\]", read("CHANGELOG.md"), flags=re.M)
  assert changelog[0] == version  # The newest entry is this version.
  setup = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True,
                         text=True, check=True)
  assert setup.stdout.strip().splitlines()[-1] == version
  conf = read("docs/conf.py")
  assert "robust_dd\", \"__init__.py\"" in conf  # The docs read it from the package.
  for path, text in texts():  # A version cited in the docs is one the changelog has.
    for cited in re.findall(r"\bv(\d+\.\d+)(?:\.\d+)?\b", text):
      assert any(c.startswith(cited) for c in changelog), f"{path} cites v{cited}"


def test_the_api_page_documents_every_public_module():
  api = read("docs/api.md")
  modules = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "robust_dd",
                                                                            "*.py")))
  missing = [m for m in modules if not m.startswith("_") and f"automodule:: robust_dd.{m}\n"
             not in api]
  assert not missing, missing


def test_every_docs_page_is_in_the_table_of_contents():
  index = read("docs/index.md")
  pages = [os.path.splitext(p)[0] for p in glob.glob("**/*.md", root_dir=os.path.join(ROOT, "docs"),
                                                     recursive=True)
           if not p.startswith(("_", "benchmarks/")) and p not in ("index.md", "methods.md")]
  assert pages and all(re.search(rf"^{re.escape(p)}$", index, re.M) for p in pages), pages


@pytest.mark.slow
def test_the_site_builds_without_warnings(tmp_path):
  pytest.importorskip("sphinx")
  result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
                           "html", "docs", str(tmp_path / "html")], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
  html = (tmp_path / "html" / "benchmarks.html").read_text(encoding="utf-8")
  assert "<table" in html  # The generated benchmark tables made it in.
  assert (tmp_path / "html" / "quickstart.html").exists()


def test_docstrings_parse():
  """Every module of the package has a docstring (the API page shows it)."""
  for path in glob.glob(os.path.join(ROOT, "robust_dd", "*.py")):
    with open(path, encoding="utf-8") as f:
      assert ast.get_docstring(ast.parse(f.read())), path
