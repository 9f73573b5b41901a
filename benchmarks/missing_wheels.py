"""The wheels of a folder (`launch/offline_wheels.py`'s) whose packages this Python lacks, one path a line:
what benchmarks/device_session.sh installs without their pins when pip cannot resolve them beside a machine's own
older packages.

  python benchmarks/missing_wheels.py WHEELS_DIR
"""

import argparse
import glob
import importlib.metadata
import os


def missing_wheels(folder: str) -> list[str]:
  missing = []
  for wheel in sorted(glob.glob(os.path.join(folder, "*.whl"))):
    try:
      importlib.metadata.distribution(os.path.basename(wheel).split("-")[0])
    except importlib.metadata.PackageNotFoundError:
      missing.append(wheel)
  return missing


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("folder", help="the wheels' folder")
  print("\n".join(missing_wheels(parser.parse_args().folder)))
