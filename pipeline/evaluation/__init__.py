"""Evaluation on SQuAD-format sets (JSQuAD): reading them and scoring retrieval."""
