"""Model backends and trie exploration on real hardware (issue 3; not built yet)."""
