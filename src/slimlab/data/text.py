"""The shared base of SlimLab's text-classification DataModules, and its word vocabulary.

What happens when:

- `prepare_data` (rank zero under DDP): subclasses fetch their files; a named tokenizer is
  fetched into the Hugging Face cache.
- `setup`: `read_splits()` gives the texts and labels of train (+ val) and test; without a
  val split, `val_fraction` of train is held out with `seed`. Texts are encoded once into
  fixed-length int64 `input_ids` and `attention_mask` (padded and truncated to `max_length`):
  by the model's own tokenizer when `tokenizer` names one (Hugging Face `AutoTokenizer`),
  else by a word vocabulary built on the training split alone.
- batches: dicts {"input_ids", "attention_mask", "labels"}, as Hugging Face models take them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from typing_extensions import override

from slimlab.data.base import ClassificationDataModule
from slimlab.data.split import split_indices
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.hf import from_hub
from slimlab.utils.logging import get_logger
from slimlab.utils.optional import import_optional

log = get_logger(__name__)

Texts = tuple[list[str], list[int]]  # texts and their class indices
Encoder = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words_of(text: str) -> list[str]:
    """Lower-cased words and numbers of `text` ("Don't stop!" -> ["don't", "stop"])."""
    return _WORD.findall(text.lower())


class WordVocabulary:
    """A word-level vocabulary: [PAD]=0, [UNK]=1, [CLS]=2, then words, most frequent first.

    An encoded text is [CLS] followed by its words (unknown ones as [UNK]), truncated to
    `max_length` and padded with [PAD]; the mask is 1 on real tokens.
    """

    SPECIALS = ("[PAD]", "[UNK]", "[CLS]")
    PAD, UNK, CLS = 0, 1, 2

    def __init__(self, words: Sequence[str]) -> None:
        self.tokens = [*self.SPECIALS, *words]
        self.index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts: Sequence[str], size: int) -> WordVocabulary:
        """The `size - 3` most frequent words of `texts` (ties in alphabetical order)."""
        counts = Counter(word for text in texts for word in words_of(text))
        ranked = sorted(counts, key=lambda word: (-counts[word], word))
        return cls(ranked[: size - len(cls.SPECIALS)])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of `texts`, both int64 (len(texts), max_length)."""
        ids = torch.full((len(texts), max_length), self.PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.CLS, *(self.index.get(w, self.UNK) for w in words_of(text))]
            tokens = tokens[:max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids, (ids != self.PAD).long()


class EncodedTexts(Dataset):
    """Encoded texts and labels; item i is {"input_ids", "attention_mask", "labels"}."""

    def __init__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> None:
        self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
        }


class TextDataModule(ClassificationDataModule):
    """Splits, encoding and loaders of a text-classification dataset; subclasses only read it.

    `tokenizer`: a Hugging Face model name or folder whose `AutoTokenizer` encodes the texts
    (the model's own tokenizer), or None for a `WordVocabulary` of `vocab_size` tokens built
    on the training split (offline; the net's vocabulary must then hold `vocab_size` ids).
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        max_length: int = 64,
        vocab_size: int = 5000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(
            self.mix is None,
            f"data.mix={self.mix} mixes images; token ids cannot be mixed: give data.mix=null",
        )
        require(
            isinstance(max_length, int) and max_length >= 2,
            f"data.max_length={max_length} is out of range: give the tokens per text, >= 2",
        )
        require(
            tokenizer is not None or (isinstance(vocab_size, int) and vocab_size > 3),
            f"data.vocab_size={vocab_size} is out of range: give more than 3 tokens (3 are "
            "[PAD], [UNK], [CLS])",
        )
        self.tokenizer = tokenizer or None
        self.max_length = max_length
        self.vocab_size = vocab_size
        self.vocabulary: WordVocabulary | None = None

    def read_splits(self) -> dict[str, Texts]:
        """Texts and labels of "train" and "test" (and "val" if the dataset has one)."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Fetch the named tokenizer into the Hugging Face cache (rank zero under DDP)."""
        if self.tokenizer:
            self._hf_tokenizer()

    def _hf_tokenizer(self) -> Any:
        auto = import_optional("transformers", "hf").AutoTokenizer
        return from_hub(
            auto.from_pretrained,
            self.tokenizer,
            "data.tokenizer",
            "set data.tokenizer=null to tokenise with a word vocabulary built on the data",
        )

    def _encoder(self, train_texts: Sequence[str]) -> Encoder:
        if self.tokenizer:
            tokenizer = self._hf_tokenizer()

            def encode(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
                out = tokenizer(
                    list(texts),
                    max_length=self.max_length,
                    padding="max_length",
                    truncation=True,
                    return_tensors="pt",
                    return_token_type_ids=False,
                )
                return out["input_ids"].long(), out["attention_mask"].long()

            return encode
        self.vocabulary = WordVocabulary.build(train_texts, self.vocab_size)
        log.info(f"Word vocabulary: {len(self.vocabulary)} tokens from the training split")
        return lambda texts: self.vocabulary.encode(texts, self.max_length)

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        splits = self.read_splits()
        for name, (texts, labels) in splits.items():
            bad = [y for y in labels if not 0 <= y < self.num_classes]
            if bad or len(texts) != len(labels) or not labels:
                raise ConfigError(
                    f"{type(self).__name__}: the {name} split holds {len(texts)} texts and "
                    f"{len(labels)} labels, {len(bad)} of them outside 0..{self.num_classes - 1}: "
                    "each split needs one label per text, each a class index"
                )
        if "val" not in splits:
            texts, labels = splits["train"]
            train, val = split_indices(len(labels), self.val_fraction, self.seed)
            splits["train"] = ([texts[i] for i in train], [labels[i] for i in train])
            splits["val"] = ([texts[i] for i in val], [labels[i] for i in val])
        encode = self._encoder(splits["train"][0])
        datasets = []
        for name in ("train", "val", "test"):
            texts, labels = splits[name]
            datasets.append(EncodedTexts(*encode(texts), torch.tensor(labels, dtype=torch.long)))
        log.info(
            f"{type(self).__name__}: {len(datasets[0])} train, {len(datasets[1])} val, "
            f"{len(datasets[2])} test texts of {self.max_length} tokens"
        )
        return datasets[0], datasets[1], datasets[2]

    @override
    def preprocessing(self) -> dict[str, Any]:
        """How a raw text becomes the network's input, as plain data for an export: token ids
        (int64, not normalised) from `tokenizer` (a Hugging Face name) or from `vocabulary`
        (the word list, index = id; see `WordVocabulary`), padded to `max_length`. Call after
        `setup`."""
        vocabulary = self.vocabulary.tokens if self.vocabulary is not None else None
        return {
            "dtype": "int64",
            "scale": 1.0,
            "mean": [0.0],
            "std": [1.0],
            "tokenizer": self.tokenizer,
            "vocabulary": vocabulary,
            "max_length": self.max_length,
        }


class DownloadedTextDataModule(TextDataModule):
    """Base of the text datasets kept as files in `data_dir`, fetched when `download` is on.

    Subclasses implement `fetch()`: check (and, if allowed, download) their files.
    """

    def __init__(self, data_dir: str, download: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir).expanduser()
        self.download = download

    def fetch(self) -> Any:
        """Make sure the dataset's files are in `data_dir` (MD5-checked); return their paths."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Download the missing files, then the tokenizer (rank zero under DDP)."""
        self.fetch()
        super().prepare_data()
