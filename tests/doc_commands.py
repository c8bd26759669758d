"""The shell commands written in the README and docs, as data for tests/test_docs.py.

A command is a line of a fenced `bash` block (backslash continuations joined,
`# comments` dropped), split at `&&`, `;` and `&`; commented-out alternatives
(`#   --flag=...` lines under a command) are not commands. Leading environment
assignments (`JAX_PLATFORMS=cpu`) and launchers (`srun`, `nohup`) are kept
apart from the command they start, and redirections (`> log 2>&1 < /dev/null`)
are dropped. Each command is checked against the code it names: the module
exists, every `--flag` is one the module defines, every config file / variant /
`--config.x.y` override loads.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = ("README.md", "BENCHMARKS.md", *sorted(os.path.relpath(p, ROOT)
                                                  for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))))

_ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
LAUNCHERS = ("srun", "nohup")  # Commands that run the command after them (without options of their own here).
_FLAG_DEFINITION = re.compile(r"""(?:DEFINE_[a-z_]+|DEFINE_config_file)\(\s*["']([A-Za-z0-9_]+)["']""")
_ARGPARSE_DEFINITION = re.compile(r"""add_argument\(\s*["']--([A-Za-z0-9_]+)["']""")


@dataclasses.dataclass(frozen=True)
class Command:
  doc: str          # file it is written in
  line: int         # line of its first physical line
  argv: tuple[str, ...]  # without leading environment assignments and launchers, which are in `env`, `launcher`
  env: tuple[str, ...] = ()
  launcher: tuple[str, ...] = ()

  def __str__(self):
    return f"{self.doc}:{self.line}: {shlex.join(self.env + self.launcher + self.argv)}"

  @classmethod
  def of(cls, doc: str, line: int, argv) -> "Command":
    argv = list(argv)
    env, launcher = [], []
    while argv and _ENV_ASSIGNMENT.match(argv[0]):
      env.append(argv.pop(0))
    while len(argv) > 1 and argv[0] in LAUNCHERS:
      launcher.append(argv.pop(0))
    return cls(doc, line, tuple(argv), tuple(env), tuple(launcher))


def _bash_blocks(text: str):
  """(first line number, [lines]) of each ```bash block."""
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    if lines[i].strip().startswith("```bash"):
      start, body = i + 2, []
      i += 1
      while i < len(lines) and not lines[i].strip().startswith("```"):
        body.append(lines[i])
        i += 1
      yield start, body
    i += 1


def commands(doc: str) -> list[Command]:
  """Every command of the bash blocks of `doc` (a path relative to the repo root)."""
  with open(os.path.join(ROOT, doc)) as f:
    text = f.read()
  out = []
  for start, body in _bash_blocks(text):
    logical, first = "", None
    for offset, raw in enumerate(body):
      line = raw.strip()
      if not logical and (not line or line.startswith("#")):
        continue
      if first is None:
        first = start + offset
      continuation = line.endswith("\\")
      logical += (" " if not _open_quote(logical) else "\n") + (line[:-1] if continuation else line)
      if continuation or _open_quote(logical):
        continue
      for argv in split_commands(logical):
        out.append(Command.of(doc, first, argv))
      logical, first = "", None
  return out


def _open_quote(text: str) -> bool:
  try:
    shlex.split(text, comments=True)
    return False
  except ValueError:
    return True


_STDERR_TO_STDOUT = "\x00stderr-to-stdout\x00"
_REDIRECTION = re.compile(r"^\d*(?:>>?|<)(.*)$")


def split_commands(text: str) -> list[list[str]]:
  """Shell text -> argv lists, split at `&&`, `;` and `&` (outside quotes), redirections dropped."""
  lexer = shlex.shlex(re.sub(r"(?<![\w&])2>&1", _STDERR_TO_STDOUT, text), posix=True,
                      punctuation_chars=";&")
  lexer.whitespace_split = True
  lexer.commenters = "#"
  out, current = [], []
  tokens = iter(lexer)
  for token in tokens:
    if token in (";", "&&", "&"):
      if current:
        out.append(current)
      current = []
    elif token == _STDERR_TO_STDOUT:
      continue
    elif _REDIRECTION.match(token):  # `> file`, `>file`, `2> file`, `< file`: not arguments of the command.
      if not _REDIRECTION.match(token).group(1):
        next(tokens, None)
    else:
      current.append(token.replace(_STDERR_TO_STDOUT, "2>&1"))
  if current:
    out.append(current)
  return out


def nested_commands(argv) -> list[list[str]]:
  """Commands inside `--command="..."` (gcloud ... ssh --command)."""
  return [c for arg in argv if arg.startswith("--command=") for c in split_commands(arg[len("--command="):])]


_INLINE_PYTHON = re.compile(r"`(python3? (?:-m )?[^`]+)`")


def inline_commands(doc: str) -> list[Command]:
  """`python ...` commands written in inline code spans (BENCHMARKS.md quotes its commands so)."""
  out = []
  with open(os.path.join(ROOT, doc)) as f:
    for number, line in enumerate(f, 1):
      for text in _INLINE_PYTHON.findall(line):
        out.extend(Command.of(doc, number, argv) for argv in split_commands(text))
  return out


def all_commands() -> list[Command]:
  """Every command of the docs, with those run through `gcloud ... ssh --command="..."` as their own."""
  out = []
  for doc in DOC_FILES:
    for c in commands(doc) + inline_commands(doc):
      out.append(c)
      out.extend(Command.of(c.doc, c.line, argv) for argv in nested_commands(c.argv))
  return out





def is_placeholder(value: str) -> bool:
  """`CONFIG`, `W`, `DATA`, `runs/anet_VARIANT`: names the reader replaces."""
  return bool(re.search(r"\b[A-Z][A-Z_]*\b", value)) and not value.startswith("configs/")


def python_target(argv) -> tuple[str, list[str]] | None:
  """(source file of the module or script run, its arguments) for a python command, else None."""
  argv = list(argv)
  if not argv or not os.path.basename(argv[0]).startswith("python"):
    return None
  if argv[1:2] == ["-m"]:
    module = argv[2]
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    return path, list(argv[3:])
  if argv[1:2] == ["-c"]:
    return None
  return os.path.join(ROOT, argv[1]), list(argv[2:])


_HELP_FLAG = re.compile(r"^\s+(?:-\S+,)?--(?:\[no\])?([A-Za-z0-9_]+)[:\s]", re.MULTILINE)


def defined_flags(source_path: str) -> set[str]:
  """Flag names a binary defines (absl DEFINE_* or argparse).

  Read from its source, and for an absl binary also from its `--helpfull`
  (flags defined by shared helpers, e.g. `data_prep/cli.py`'s
  `define_common_flags`, are not in the binary's own source).
  """
  with open(source_path) as f:
    src = f.read()
  names = set(_FLAG_DEFINITION.findall(src)) | set(_ARGPARSE_DEFINITION.findall(src))
  if "absl" in src:
    names |= {"helpfull", "help", "alsologtostderr", "logtostderr", "v", "verbosity"}
    names |= helpfull_flags(source_path)
  return names


@functools.lru_cache(maxsize=None)
def helpfull_flags(source_path: str) -> frozenset[str]:
  """Every flag an absl binary lists in `--helpfull` (run as `python -m <module>` from the repo root)."""
  module = os.path.relpath(source_path, ROOT)[:-len(".py")].replace(os.sep, ".")
  result = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  return frozenset(_HELP_FLAG.findall(result.stdout + result.stderr))


def given_flags(args) -> list[tuple[str, str | None]]:
  """(name, value) of every `--name[=value]` argument (`--config.a.b` keeps its dots)."""
  out = []
  for arg in args:
    if arg.startswith("--"):
      name, eq, value = arg[2:].partition("=")
      out.append((name, value if eq else None))
  return out


def load_config(spec: str, overrides: dict[str, str]) -> ml_collections.ConfigDict:
  """`configs/x.py[:arg]` with `--config.a.b=value` overrides applied as absl would."""
  import importlib.util
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("doc_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"config has no field {key}")
    if isinstance(node[leaf], bool):  # As absl parses a bool override; bool("False") would be True.
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"{key}: {value!r} is not a bool")
      node[leaf] = value.lower() in ("true", "1")
    else:
      node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], (tuple, type(None))) else value
  return config


def scratch_repo(tmp_path) -> dict[str, str]:
  """Makes `tmp_path` stand for the repository root (the docs' relative paths land there).

  Returns the environment to run documented commands with: this repository on
  PYTHONPATH and one CPU device, as on a user's machine.
  """
  for name in ("configs", "data_prep", "hammer_jax", "benchmarks"):
    os.symlink(os.path.join(ROOT, name), os.path.join(tmp_path, name))
  return scratch_env()


def scratch_env() -> dict[str, str]:
  """The environment documented commands run with: this repository on PYTHONPATH, one CPU device."""
  return dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1",
              TF_CPP_MIN_LOG_LEVEL="3")


def run_as_written(argv, cwd, env, timeout: float = 900) -> tuple[str, str]:
  """Runs a documented python command with this interpreter; (stdout, stderr), failing on a non-zero exit."""
  result = subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
  return result.stdout, result.stderr


# -- prose and tables of the docs ---------------------------------------------------

def read_doc(doc: str) -> str:
  with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
    return f.read()


def fenced_blocks(doc: str, language: str) -> list[str]:
  """The bodies of the ```<language> blocks of `doc`."""
  return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", read_doc(doc), re.S | re.M)]


def section(doc: str, heading: str) -> str:
  """Text of the section whose heading starts with `heading` ('## X'), up to the next heading of its level."""
  text = read_doc(doc)
  level = heading.split(" ")[0]
  start = text.index(heading)
  following = re.search(rf"^{level} ", text[start + len(heading):], re.M)
  return text[start:start + len(heading) + following.start()] if following else text[start:]


def table_rows(text: str) -> list[list[str]]:
  """Cells of every Markdown table row of `text` (header included, separator rows left out)."""
  rows = []
  for line in text.splitlines():
    line = line.strip()
    if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|", line):
      rows.append([c.strip() for c in line.strip("|").split("|")])
  return rows


def number(text: str) -> float:
  """'17,435' -> 17435.0; '13.8 GB' -> 13.8 (the first number of the text)."""
  return float(re.search(r"\d[\d,]*(?:\.\d+)?", text).group(0).replace(",", ""))


def decimals(text: str) -> int:
  """Decimals written in the first number of `text` ('13.8 GB' -> 1)."""
  found = re.search(r"\d[\d,]*(?:\.(\d+))?", text)
  return len(found.group(1) or "")


def heading_anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces -> '-'."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: str) -> set[str]:
  return {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", read_doc(doc), re.M)}
