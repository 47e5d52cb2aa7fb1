"""The generated topic task: the label is the topic with the most keywords, always."""

from __future__ import annotations

import random

from slimlab.data.synthetic_text import TOPICS, generate
from slimlab.data.text import words_of


def test_label_is_the_topic_with_most_keywords_and_classes_are_balanced() -> None:
    texts, labels = generate(400, 3, random.Random(0))
    keywords = list(TOPICS.values())[:3]
    distractors = 0
    for text, label in zip(texts, labels, strict=True):
        words = words_of(text)
        counts = [sum(w in topic for w in words) for topic in keywords]
        assert counts[label] >= 2 and max(c for i, c in enumerate(counts) if i != label) <= 1
        distractors += sum(counts) > counts[label]
        assert not any(w in TOPICS["science"] for w in words)  # only the first 3 topics
    assert [labels.count(c) for c in range(3)] == [134, 133, 133]
    assert 120 < distractors < 280  # about half the texts carry another topic's keyword
