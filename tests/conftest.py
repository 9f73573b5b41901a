"""Test-wide set-up and the fixtures several test files share.

absl flags are parsed (Grain and TFDS read them) and JAX runs on the CPU: the suite runs on one
CPU device; tests/multidevice_check.py runs in a subprocess with 8 fake devices (XLA_FLAGS must be
set before JAX starts).

Tiers (setup.cfg registers the marker): tests marked `integration` run real training loops,
end-to-end subprocess runs or several devices, or take more than a few seconds; everything else
is a fast unit test. `pytest -m "not integration"` runs the fast tier, plain `pytest` (and
tests/run.sh) runs both.

Nothing is kept between runs: what the tests build lives under pytest's temporary folder, and
the XLA programs compiled in this run (by the tests and the subprocesses they start, which compile
many of the same models) are shared through a persistent compilation cache in a temporary folder
removed at exit.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # read by JAX at import, and inherited by subprocesses
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fer_jax_tests_xla_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Every program, not only those that took a second to compile: the subprocesses recompile many
# small ones (augmentation, evaluation, checkpoint helpers) that add up.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Compilation is about half of the suite's CPU time, and its programs run a few steps each: LLVM's
# -O1 compiles them faster (initialisations ~2×, train steps ~10 %) for a few per cent slower steps.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")
if "MPLCONFIGDIR" not in os.environ:  # matplotlib's font cache and config, not the user's ~/.cache and ~/.config
  os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="fer_jax_tests_mpl_")
  atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], ignore_errors=True)

from absl import flags  # noqa: E402
import pytest  # noqa: E402

flags.FLAGS.mark_as_parsed()

import helpers  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def tiny_data_folder(tmp_path_factory):
  """This session's folder for synthetic/tiny, exported as $FER_JAX_TEST_TFDS_DIR for
  helpers.tiny_data_dir (and tiny_run) and for the subprocesses the tests start. Nothing is built
  until a test needs the set."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(helpers.TINY_DATA_ENV, str(tmp_path_factory.mktemp("tfds")))
    yield


@pytest.fixture(scope="session")
def tiny_data_dir(tiny_data_folder):
  """The path of synthetic/tiny (280 train / 70 test, 32×32), built once per session."""
  return helpers.tiny_data_dir()


def pytest_collection_modifyitems(items):
  """Integration tests first: started early, the longest ones (minutes each) overlap the other
  worker's queue instead of finishing alone at the end of a two-worker run."""
  items.sort(key=lambda item: item.get_closest_marker("integration") is None)


def _failed_under_ci(report) -> None:
  """Under CI (CI set, as .ci/run's caller sets it) a skip fails: a test that cannot run where CI runs (no tmpfs mount,
  no shellcheck, a module whose import is skipped) would otherwise pass unseen."""
  if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome, report.longrepr = "failed", f"Skipped under CI, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  del item, call
  outcome = yield
  _failed_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  del collector
  outcome = yield
  _failed_under_ci(outcome.get_result())
