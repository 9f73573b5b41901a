"""Wheels to install fer_jax on a machine without internet (an air-gapped cluster node, a lent GPU
box), made here, where pip reaches an index.

  .venv/bin/python launch/offline_wheels.py --out=WHEELS [--python_version=3.12] [--have=TARGET_PACKAGES]
  # copy WHEELS and the checkout there, then, on it, from the checkout:
  python -m pip install --no-index --find-links=WHEELS -r WHEELS/requirements.txt
  python -m fer_jax.main --config=...      # or `pip install --no-index --no-deps -e .` first

WHEELS gets a wheel of every package fer_jax needs at run time (its install_requires and theirs,
at the versions installed here, where the test suite passes; this checkout must be installed,
`pip install -e .`) for the target's CPython on x86-64 Linux, and requirements.txt with
fer_jax's own version ranges, so that pip keeps what the target already has where it fits and
installs the rest from WHEELS. TARGET_PACKAGES names what the target has (`pip list
--format=freeze` there, or one name a line): its compiled packages (jaxlib, numpy, OpenCV, …) are
left out, its pure-Python ones kept (small; they let pip replace a version outside fer_jax's
ranges). A package published only as source (promise) is built into a wheel here, and must
then be pure Python. Exits 1 naming each package it could not get, 2 when it cannot read --have.
"""

import argparse
import concurrent.futures
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def installed(name: str, root: str = "fer_jax") -> importlib.metadata.Distribution:
  """`name`'s installed distribution; SystemExit naming it and the fix where this Python lacks it."""
  try:
    return importlib.metadata.distribution(name)
  except importlib.metadata.PackageNotFoundError:
    needed_by = "" if name == root else f" (needed by {root})"
    raise SystemExit(f"{name}{needed_by} is not installed for {sys.executable}: run this with the Python fer_jax is "
                     "installed in (.venv/bin/python), or `pip install -e .` in the checkout first") from None


def runtime_requirements(python_version: str, name: str = "fer_jax", extras=()) -> list[Requirement]:
  """What `name` (with `extras`) requires on `python_version`."""
  requirements = [Requirement(line) for line in installed(name, root=name).requires or []]
  def applies(requirement, extra):
    return requirement.marker.evaluate({"extra": extra, "python_version": python_version,
                                        "python_full_version": f"{python_version}.0"})
  return [r for r in requirements if r.marker is None or any(applies(r, e) for e in ("", *extras))]


def runtime_closure(python_version: str, root: str = "fer_jax") -> dict[str, tuple[str, bool]]:
  """{canonical name: (installed version, pure Python)} of every package `root` needs at run time
  on `python_version` (the extras its requirements name included), `root` excluded."""
  closure, done = {}, set()
  pending = [(r.name, r.extras) for r in runtime_requirements(python_version, root)]
  while pending:
    name, extras = pending.pop()
    wanted = {(canonical(name), extra) for extra in ("", *extras)}
    if wanted <= done:
      continue
    done |= wanted
    distribution = installed(name, root)
    pure = "Root-Is-Purelib: true" in (distribution.read_text("WHEEL") or "")
    closure[canonical(name)] = (distribution.version, pure)
    pending += [(r.name, r.extras) for r in runtime_requirements(python_version, name, extras)]
  return closure


def target_packages(path: str) -> set[str]:
  """Canonical names in `pip list --format=freeze` output, a `pip list` table or one name a line."""
  with open(path, encoding="utf-8") as file:
    words = (re.split(r"[=\s@]", line.strip(), maxsplit=1)[0] for line in file)
    return {canonical(word) for word in words if word and not word.startswith(("#", "Package", "---"))}


def to_fetch(closure: dict[str, tuple[str, bool]], have: set[str]) -> dict[str, str]:
  """{name: version} of the wheels the target needs: what it lacks, and every pure-Python package."""
  return {name: version for name, (version, pure) in closure.items() if pure or name not in have}


def _pip(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--quiet"],
                        capture_output=True, text=True, check=False)


def fetch(name: str, version: str, pure: bool, python_version: str, out: str) -> str | None:
  """Downloads `name==version`'s wheel for the target into `out` (or builds a pure-Python one from
  its source); returns why it could not, or None."""
  platform_args = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
  spec = f"{name}=={version}"
  downloaded = _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                    "--implementation", "cp", *platform_args, "--dest", out, spec)
  if downloaded.returncode == 0:
    return None
  if not pure:
    return f"{spec}: no wheel for CPython {python_version} on x86-64 Linux ({downloaded.stderr.strip()[-300:]})"
  with tempfile.TemporaryDirectory() as build:
    built = _pip("wheel", "--no-deps", "--wheel-dir", build, spec)
    wheels = os.listdir(build) if built.returncode == 0 else []
    if len(wheels) != 1 or not wheels[0].endswith("-none-any.whl"):
      return f"{spec}: no wheel, and building one here gave {wheels or built.stderr.strip()[-300:]}"
    os.replace(os.path.join(build, wheels[0]), os.path.join(out, wheels[0]))
  return None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="the folder to fill (created)")
  parser.add_argument("--python_version", default="3.12", help="the target's CPython, MAJOR.MINOR")
  parser.add_argument("--have", default="", help="the target's `pip list --format=freeze` (or one name a line)")
  args = parser.parse_args(argv)
  try:
    have = target_packages(args.have) if args.have else set()
  except OSError as e:
    parser.exit(2, f"error: --have={args.have}: {e.strerror}; give the file with the target's "
                "`pip list --format=freeze`\n")
  try:
    os.makedirs(args.out, exist_ok=True)
  except OSError as e:
    parser.exit(2, f"error: --out={args.out}: {e.strerror}; give a folder (new or existing) for the wheels\n")
  closure = runtime_closure(args.python_version)
  wanted = to_fetch(closure, have)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    failures = [f for f in pool.map(lambda n: fetch(n, wanted[n], closure[n][1], args.python_version, args.out),
                                    sorted(wanted)) if f]
  with open(os.path.join(args.out, "requirements.txt"), "w", encoding="utf-8") as file:
    file.writelines(f"{r}\n" for r in runtime_requirements(args.python_version))
  print(f"{len(wanted) - len(failures)} of {len(closure)} run-time packages in {args.out}"
        f" ({len(closure) - len(wanted)} compiled ones the target has left out)")
  for failure in failures:
    print(f"error: {failure}", file=sys.stderr)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
