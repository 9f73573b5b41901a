"""launch/offline_wheels.py: which packages a machine without internet needs, read from installed
metadata (stand-in distributions on sys.path, and this environment's fer_jax), and which of them
the target already has. Downloading is left to pip and checked by hand (docs/running_at_scale.md)."""

import pytest

from helpers import load_script

offline_wheels = load_script("launch/offline_wheels.py")


def _distribution(root, name, version, requires=(), pure=True):
  """A stand-in installed distribution: NAME-VERSION.dist-info with METADATA and WHEEL."""
  info = root / f"{name}-{version}.dist-info"
  info.mkdir()
  lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
  (info / "METADATA").write_text("\n".join(lines) + "\n")
  (info / "WHEEL").write_text(f"Wheel-Version: 1.0\nRoot-Is-Purelib: {'true' if pure else 'false'}\n")


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
  _distribution(tmp_path, "demo_root", "1.0", ['Alpha-Pkg>=1; python_version < "3.12"', "beta[fast]>=2",
                                               'torchlike; extra == "parity"'])
  _distribution(tmp_path, "alpha_pkg", "1.5")
  _distribution(tmp_path, "beta", "2.1", ['gamma; extra == "fast"', 'delta; extra == "slow"', "epsilon"], pure=False)
  _distribution(tmp_path, "gamma", "0.3", pure=False)
  _distribution(tmp_path, "epsilon", "4.0", ["beta[fast]"])
  monkeypatch.syspath_prepend(str(tmp_path))


def test_the_closure_follows_markers_for_the_target_python_and_requested_extras_only(stand_ins):
  closure = offline_wheels.runtime_closure("3.12", root="demo_root")
  assert closure == {"beta": ("2.1", False), "gamma": ("0.3", False), "epsilon": ("4.0", True)}
  assert offline_wheels.runtime_closure("3.11", root="demo_root")["alpha-pkg"] == ("1.5", True)


def test_a_requirement_not_installed_here_stops_with_the_fix(tmp_path, monkeypatch):
  _distribution(tmp_path, "lonely", "1.0", ["missing-package"])
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(SystemExit, match=r"missing-package \(needed by lonely\) is not installed for .*pip install -e \."):
    offline_wheels.runtime_closure("3.12", root="lonely")


def test_a_python_without_fer_jax_stops_with_the_fix():
  """Run with a Python fer_jax is not installed in, as docs/running_at_scale.md's `python launch/offline_wheels.py`
  may be, the script ended in a PackageNotFoundError traceback."""
  with pytest.raises(SystemExit, match=r"^not-installed-root is not installed for .*: run this with the Python "
                                       r"fer_jax is installed in \(\.venv/bin/python\)"):
    offline_wheels.runtime_closure("3.12", root="not-installed-root")


def test_the_target_keeps_its_compiled_packages_and_gets_every_pure_one(stand_ins, tmp_path):
  listing = tmp_path / "target.txt"
  listing.write_text("Package Version\n------- -------\nBeta 2.0\ngamma==0.3\nEpsilon @ file:///x\n")
  have = offline_wheels.target_packages(str(listing))
  assert have == {"beta", "gamma", "epsilon"}
  closure = offline_wheels.runtime_closure("3.12", root="demo_root")
  assert offline_wheels.to_fetch(closure, have) == {"epsilon": "4.0"}
  assert offline_wheels.to_fetch(closure, set()) == {"beta": "2.1", "gamma": "0.3", "epsilon": "4.0"}


def test_fer_jax_closure_holds_its_dependencies_and_their_extras_but_not_its_own_extras():
  closure = offline_wheels.runtime_closure("3.12")
  assert {"jax", "jaxlib", "flax", "tensorflow-datasets", "grain", "promise"} <= set(closure)
  assert "fsspec" in closure  # tensorflow-datasets asks for etils[epath], which needs fsspec
  assert not {"torch", "pytest", "onnx", "fer-jax"} & set(closure)
  assert closure["flax"][1] and not closure["jaxlib"][1]
  required = {offline_wheels.canonical(r.name) for r in offline_wheels.runtime_requirements("3.12")}
  assert {"jax", "tensorflow-datasets", "mtcnn"} <= required <= set(closure)


def test_a_missing_have_file_is_one_line_naming_it(tmp_path, capsys):
  with pytest.raises(SystemExit) as exited:
    offline_wheels.main([f"--out={tmp_path / 'wheels'}", f"--have={tmp_path / 'missing.txt'}"])
  assert exited.value.code == 2
  assert capsys.readouterr().err == (f"error: --have={tmp_path / 'missing.txt'}: No such file or directory; give the "
                                     "file with the target's `pip list --format=freeze`\n")
  assert not (tmp_path / "wheels").exists()


def test_an_out_that_is_a_file_is_one_line_naming_it(tmp_path, capsys):
  (tmp_path / "wheels").write_text("not a folder")
  with pytest.raises(SystemExit) as exited:
    offline_wheels.main([f"--out={tmp_path / 'wheels'}"])
  assert exited.value.code == 2
  assert capsys.readouterr().err == (f"error: --out={tmp_path / 'wheels'}: File exists; give a folder (new or "
                                     "existing) for the wheels\n")
