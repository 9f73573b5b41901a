"""The `--help` of several benchmarks/ scripts, one after another in this one interpreter, which imports JAX,
fer_jax and the scripts' libraries once (a process each took ~55 s of CPU on 2 cores). Each runs as `python
benchmarks/NAME --help` would: benchmarks/ first on sys.path, which is then restored, and the modules it imported
from benchmarks/ and tests/ forgotten, so that no script finds one that an earlier script brought in. Writes
{name: [exit status, output]} as JSON (absl's scripts need a process each: their flags are global).

    python tests/usages_check.py BENCHMARKS_FOLDER RESULT_JSON NAME...
"""

import contextlib
import io
import json
import os
import runpy
import sys
import traceback


def usage(script: str) -> tuple[int, str]:
  """(exit status, stdout and stderr) of `script --help` run as __main__."""
  sys.argv = [script, "--help"]
  output, status = io.StringIO(), 0
  with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
    try:
      runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
      if isinstance(stop.code, str):
        print(stop.code, file=sys.stderr)
      status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:  # pylint: disable=broad-except  (reported as the script's own traceback)
      traceback.print_exc()
      status = 1
  return status, output.getvalue()


def main(folder: str, result: str, names: list[str]) -> None:
  own = tuple(os.path.join(os.path.dirname(folder), part, "") for part in ("benchmarks", "tests"))
  path, usages = sys.path[1:], {}
  for name in names:
    sys.path[:] = [folder, *path]
    before = set(sys.modules)
    usages[name] = usage(os.path.join(folder, name))
    for module in set(sys.modules) - before:
      if (getattr(sys.modules[module], "__file__", None) or "").startswith(own):
        del sys.modules[module]
  with open(result, "w", encoding="utf-8") as file:
    json.dump(usages, file)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], sys.argv[3:])
