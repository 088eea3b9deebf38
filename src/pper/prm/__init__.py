"""A line-level process reward model (arXiv 2410.17621): line labels by binary search over prefixes
(`search`), the completers that probe a prefix (`completers`)."""
