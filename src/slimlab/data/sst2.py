"""SST-2 (GLUE; Socher et al. 2013): movie-review sentences labelled negative (0) / positive (1).

GLUE's SST-2.zip, fetched once and MD5-checked, read in place: SST-2/train.tsv (67,349
sentences) is split into train/val, and SST-2/dev.tsv (872) is the test set (GLUE's own
test.tsv has no labels). Both are tab-separated with a "sentence<TAB>label" header.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from slimlab.data.download import ensure_file
from slimlab.data.text import DownloadedTextDataModule, Texts
from slimlab.utils.errors import ConfigError

# URL and MD5 as torchtext records them (pytorch/text, torchtext/datasets/sst2.py)
URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
ARCHIVE = "SST-2.zip"
MD5 = "9f81648d4199384278b86e315dac217c"
MEMBERS = {"train": "SST-2/train.tsv", "test": "SST-2/dev.tsv"}


def read_tsv(archive: Path, member: str) -> Texts:
    """Sentences and labels (0/1) of one labelled SST-2 file inside `archive`."""
    where = f"{archive}:{member}"
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as raw:
            text = io.TextIOWrapper(raw, "utf-8")
            rows = list(csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{where} could not be read ({exc}): delete {archive} and run again to download it"
        ) from exc
    if not rows or rows[0] != ["sentence", "label"]:
        raise ConfigError(f"{where} starts with {rows[:1]!r}, not the header sentence<TAB>label")
    texts, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[1] not in ("0", "1"):
            raise ConfigError(f"{where} line {line} is {row!r}: expected sentence<TAB>0 or 1")
        texts.append(row[0])
        labels.append(int(row[1]))
    return texts, labels


class SST2DataModule(DownloadedTextDataModule):
    """SST-2 from `data_dir`/SST-2.zip, downloaded there when missing and `download` is on."""

    num_classes = 2

    def fetch(self) -> Path:
        return ensure_file(self.data_dir / ARCHIVE, [URL], MD5, self.download)

    def read_splits(self) -> dict[str, Texts]:
        archive = self.fetch()
        return {split: read_tsv(archive, member) for split, member in MEMBERS.items()}
