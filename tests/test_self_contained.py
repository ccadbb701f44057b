"""Users clone the repository alone: nothing in it may read a path outside the checkout.

`.ci/run` also runs the whole suite from a copy of the tracked files in a temporary folder with
nothing beside it; this test keeps the tree from naming the folder our machines put there.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.paths import REPO, tracked_files

# The reference folder beside our checkouts, however it is spelled: a relative path up into it,
# or a Path walk out of the repository into it (from `.parent` or `parents[N]`); the spellings
# are in test_the_check_sees_each_spelling.
OUTSIDE = re.compile(r"\.\./" + "shared" + r"|(?:parent|parents\[\d\])\s*/\s*['\"]" + "shared")


def names_outside(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError):  # binary, or deleted but not yet staged
        return []
    return [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
            for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]


def test_no_tracked_file_reads_the_folder_beside_the_checkout() -> None:
    files = tracked_files()
    assert len(files) > 100  # the walk saw the tree, not an empty folder
    hits = [hit for path in files for hit in names_outside(path)]
    assert not hits, "\n".join(hits)


def test_the_check_sees_each_spelling() -> None:
    spellings = ["curl -F file=@../" + "shared/data/x.csv",
                 'CSV = REPO.parent / "' + 'shared" / "data"',
                 "p = Path(__file__).parents[2] / '" + "shared'"]
    for text in spellings:
        assert OUTSIDE.search(text), text
    assert not OUTSIDE.search("a shared feed, shared by every stream of a job")


def test_the_notebook_dataset_ships_inside_the_repository() -> None:
    csv = REPO / "models" / "data" / "concertriccir2.csv"
    assert csv in tracked_files()
    assert csv.read_bytes().startswith(b"X,Y,class")
