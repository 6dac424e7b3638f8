"""The aesthetic cache: the persistent store, similarity strategies, admission, collapse detection,
injection, the per-session aesthetic loop tying them together, and its background analysis."""
