"""Text data: the word vocabulary, fixed-length encoding, splits and dict batches, offline."""

from __future__ import annotations

import sys

import pytest
import torch

from slimlab.data.synthetic_text import SyntheticTextDataModule
from slimlab.data.text import WordVocabulary, words_of
from slimlab.utils.errors import ConfigError


def test_words_are_lower_cased_and_keep_contractions() -> None:
    assert words_of("Don't STOP, 3 times!") == ["don't", "stop", "3", "times"]


def test_vocabulary_ranks_training_words_and_encodes_to_fixed_length() -> None:
    vocab = WordVocabulary.build(["b a a", "c a b", "d"], size=6)
    assert vocab.tokens == ["[PAD]", "[UNK]", "[CLS]", "a", "b", "c"]  # d did not fit
    ids, mask = vocab.encode(["a b d", "c c c c c c"], max_length=4)
    assert ids.dtype == mask.dtype == torch.long and ids.shape == (2, 4)
    assert ids.tolist() == [[2, 3, 4, 1], [2, 5, 5, 5]]  # [CLS] first, unknown d, truncated
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    ids, mask = vocab.encode([""], max_length=3)
    assert ids.tolist() == [[2, 0, 0]] and mask.tolist() == [[1, 0, 0]]


def test_setup_gives_dict_batches_and_a_vocabulary_from_train_only() -> None:
    dm = SyntheticTextDataModule(num_train=200, num_test=40, max_length=16, batch_size=8)
    dm.setup("fit")
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (180, 20, 40)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, 16)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert (batch["input_ids"][:, 0] == WordVocabulary.CLS).all()
    assert dm.on_after_batch_transfer(batch, 0) is batch  # no image transforms on text
    # every token id of every split is in the vocabulary, which saw the training split only
    assert int(dm.data_test.input_ids.max()) < len(dm.vocabulary) <= dm.vocab_size
    described = dm.preprocessing()  # what an export records: ids, how texts become them
    assert described["dtype"] == "int64" and described["max_length"] == 16
    assert described["vocabulary"] == dm.vocabulary.tokens and described["tokenizer"] is None


def test_same_seed_same_data_other_seed_other_data() -> None:
    def test_ids(seed: int) -> torch.Tensor:
        dm = SyntheticTextDataModule(num_train=100, num_test=20, seed=seed)
        dm.setup()
        return dm.data_test.input_ids

    assert torch.equal(test_ids(3), test_ids(3))
    assert not torch.equal(test_ids(3), test_ids(4))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_length": 1}, "data.max_length=1"),
        ({"vocab_size": 3}, "data.vocab_size=3"),
        ({"num_classes": 5}, "data.num_classes=5"),
        ({"num_train": 3}, "data.num_train=3"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SyntheticTextDataModule(**kwargs)


def test_named_tokenizer_without_transformers_says_which_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    dm = SyntheticTextDataModule(tokenizer="bert-base-uncased", num_train=20)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[hf\]"'):
        dm.prepare_data()


def test_labels_outside_the_classes_are_refused() -> None:
    class Broken(SyntheticTextDataModule):
        def read_splits(self):
            return {"train": (["a b", "c d"], [0, 7]), "test": (["e"], [1])}

    with pytest.raises(ConfigError, match=r"train split holds 2 texts and 2 labels, 1 of them"):
        Broken(num_classes=2, num_train=4).setup()
