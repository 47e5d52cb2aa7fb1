"""AG News (Zhang et al. 2015): 120k + 7.6k news titles and descriptions in 4 topics.

The two CSV files as published with the character-level CNN paper's data, fetched once and
MD5-checked. Rows are "class index","title","description" with classes 1..4 (World, Sports,
Business, Sci/Tech); a text is the title and the description joined by a space.
"""

from __future__ import annotations

import csv
from pathlib import Path

from slimlab.data.download import ensure_file
from slimlab.data.text import DownloadedTextDataModule, Texts
from slimlab.utils.errors import ConfigError
from slimlab.utils.logging import get_logger

log = get_logger(__name__)

# URLs and MD5s as torchtext records them (pytorch/text, torchtext/datasets/ag_news.py)
BASE_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/"
URLS = {"train.csv": BASE_URL + "train.csv", "test.csv": BASE_URL + "test.csv"}
MD5 = {
    "train.csv": "b1a00f826fdfbd249f79597b59e1dc12",
    "test.csv": "d52ea96a97a2d943681189a97654912d",
}
CLASSES = ("World", "Sports", "Business", "Sci/Tech")


def read_csv(path: Path) -> Texts:
    """Texts ("title description") and labels (0..3) of one AG News CSV file."""
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if len(row) != 3 or row[0] not in ("1", "2", "3", "4"):
                raise ConfigError(
                    f"{path} line {line} is {row[:3]!r}: AG News rows are "
                    '"class index (1-4)","title","description"; delete the file and run again '
                    "to download it"
                )
            labels.append(int(row[0]) - 1)
            # the published text escapes newlines as "\n" and backslashes as "\\"
            texts.append(f"{row[1]} {row[2]}".replace("\\n", " ").replace("\\", " "))
    return texts, labels


class AGNewsDataModule(DownloadedTextDataModule):
    """AG News from `data_dir` (train.csv, test.csv), downloaded there when missing and
    `download` is on. `val_fraction` of the 120k training texts are held out for validation."""

    num_classes = len(CLASSES)

    def fetch(self) -> dict[str, Path]:
        return {
            name: ensure_file(self.data_dir / name, [URLS[name]], MD5[name], self.download)
            for name in URLS
        }

    def read_splits(self) -> dict[str, Texts]:
        files = self.fetch()
        return {"train": read_csv(files["train.csv"]), "test": read_csv(files["test.csv"])}
