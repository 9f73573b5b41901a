"""The documents' relative links: each names a file of the checkout and, after `#`, a heading of that file as
GitHub anchors it; every page under docs/ is reachable from README.md."""

import collections
import glob
import os
import re

import pytest

from helpers import ROOT

PAGES = glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
DOCUMENTS = sorted(["README.md", "BENCHMARKS.md"] + [os.path.relpath(path, ROOT) for path in PAGES])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
  """GitHub's anchor of a Markdown heading: the text (a link's label, not its target) lower-cased, every character
  but letters, digits, spaces, hyphens and underscores dropped, spaces made hyphens."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(document: str) -> set[str]:
  """The anchors of a document's headings, outside code fences; a repeated one gets -1, -2, … as GitHub numbers it."""
  seen, found, fenced = collections.Counter(), set(), False
  with open(os.path.join(ROOT, document), encoding="utf-8") as file:
    for line in file:
      fenced ^= line.startswith("```")
      heading = None if fenced else re.match(r"#{1,6} (.*)", line)
      if heading:
        anchor = github_anchor(heading.group(1))
        found.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")
        seen[anchor] += 1
  return found


def relative_links(document: str) -> list[tuple[int, str, str]]:
  """(line, target file relative to the checkout, anchor or "") of each relative link in a document."""
  with open(os.path.join(ROOT, document), encoding="utf-8") as file:
    text = file.read()
  links = []
  for match in LINK.finditer(text):
    target = match.group(1)
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
      continue
    path, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(document), path)) if path else document
    links.append((text.count("\n", 0, match.start()) + 1, resolved, anchor))
  return links


def test_github_anchor_follows_githubs_rule():
  assert github_anchor("Predict: face crops, photos, videos, and the Python API") == \
      "predict-face-crops-photos-videos-and-the-python-api"
  assert github_anchor("DAN (`configs/dan.py`)") == "dan-configsdanpy"
  assert github_anchor("The quick start demo (2 CPU cores)") == "the-quick-start-demo-2-cpu-cores"
  assert github_anchor("[BENCHMARKS.md](BENCHMARKS.md) figures") == "benchmarksmd-figures"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_names_a_file_and_a_heading_it_has(document):
  broken = []
  for line, target, anchor in relative_links(document):
    if not os.path.exists(os.path.join(ROOT, target)):
      broken.append(f"{document}:{line}: no file {target}")
    elif anchor and target.endswith(".md") and anchor not in anchors(target):
      broken.append(f"{document}:{line}: {target} has no heading #{anchor}")
  assert not broken, "\n".join(broken)


def test_every_page_under_docs_is_reachable_from_the_readme():
  reached, queue = {"README.md"}, ["README.md"]
  while queue:
    for _, target, _ in relative_links(queue.pop()):
      if target.endswith(".md") and target not in reached and os.path.exists(os.path.join(ROOT, target)):
        reached.add(target)
        queue.append(target)
  assert not set(DOCUMENTS) - reached
