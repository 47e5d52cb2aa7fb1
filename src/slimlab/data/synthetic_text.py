"""A generated topic-classification task: offline, deterministic, the default text dataset.

Each text is 6-16 common filler words with 2-3 keywords of its topic and, in half the texts,
one keyword of another topic, inserted at random places; the label is the topic with the
most keywords. The filler words carry no signal, so a model must find and count keywords
wherever they sit (a bag of words solves it; position does not matter). The same `seed`
gives the same texts on every machine.
"""

from __future__ import annotations

import random
from typing import Any

from slimlab.data.text import TextDataModule, Texts
from slimlab.utils.errors import require

TOPICS = {
    "world": ["election", "minister", "treaty", "border", "embassy", "parliament", "refugees"],
    "sports": ["match", "goal", "coach", "season", "tournament", "striker", "league"],
    "business": ["market", "shares", "profit", "merger", "investors", "revenue", "bank"],
    "science": ["research", "physics", "genome", "telescope", "laboratory", "vaccine", "robot"],
}
_FILLER_TEXT = (
    "the a an of to in on for with by from at about after before over under this that it "
    "was is are were has have had will would could said says new year week day people time "
    "report today one two three first last many more most some other such also just only "
    "very still again there here when while where which who what how"
)
FILLER = tuple(_FILLER_TEXT.split())  # common words that carry no topic


def generate(num_texts: int, num_classes: int, rng: random.Random) -> Texts:
    """`num_texts` texts of the first `num_classes` topics, labels 0..num_classes-1 cycling."""
    keywords = list(TOPICS.values())[:num_classes]
    texts, labels = [], []
    for i in range(num_texts):
        label = i % num_classes
        words = rng.choices(FILLER, k=rng.randint(6, 16))
        inserted = rng.choices(keywords[label], k=rng.randint(2, 3))
        if rng.random() < 0.5:  # a distractor: one keyword of another topic
            other = rng.choice([k for c, k in enumerate(keywords) if c != label])
            inserted.append(rng.choice(other))
        for keyword in inserted:
            words.insert(rng.randint(0, len(words)), keyword)
        texts.append(" ".join(words).capitalize() + ".")
        labels.append(label)
    return texts, labels


class SyntheticTextDataModule(TextDataModule):
    """`num_train` + `num_test` generated texts of `num_classes` topics (2..4).

    `val_fraction` of the training texts are held out for validation.
    """

    def __init__(
        self, num_classes: int = 4, num_train: int = 2000, num_test: int = 500, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        require(
            isinstance(num_classes, int) and 2 <= num_classes <= len(TOPICS),
            f"data.num_classes={num_classes} is out of range: give 2..{len(TOPICS)} topics "
            f"({', '.join(TOPICS)})",
        )
        require(
            isinstance(num_train, int) and num_train >= 2 * num_classes,
            f"data.num_train={num_train} is out of range: give at least {2 * num_classes} "
            "(two texts per class)",
        )
        require(
            isinstance(num_test, int) and num_test >= 1,
            f"data.num_test={num_test} is out of range: give a positive integer",
        )
        self.num_classes = num_classes
        self.num_train, self.num_test = num_train, num_test

    def read_splits(self) -> dict[str, Texts]:
        return {
            "train": generate(self.num_train, self.num_classes, random.Random(self.seed)),
            "test": generate(self.num_test, self.num_classes, random.Random(self.seed + 1)),
        }
