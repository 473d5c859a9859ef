"""Default bounds on the work one question may ask for, shared by `npbert ask`, `npbert batch` and
`npbert serve` (each has a flag to change it): one fact, one place. Imports nothing, so the commands'
parsers can show it without loading the model code."""

# A context making more windows of max_seq_len tokens than this is refused (ask: one line; batch: an error
# row; serve: 422): one book-length context would otherwise hold a process for minutes (64 windows of 384
# tokens at stride 128 is ~16 000 tokens, ~70 KB of English).
DEFAULT_MAX_WINDOWS = 64

# `npbert explain` and POST /v1/attributions: each window costs a forward and a backward per integration
# step (ig: 2 x n_steps rows), about 100 forwards' work at n_steps 50, so far fewer windows are allowed.
DEFAULT_MAX_ATTRIBUTION_WINDOWS = 4
