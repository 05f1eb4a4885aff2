"""The behavior language: indicators, encodings, the behavior sentence and its polarity."""
