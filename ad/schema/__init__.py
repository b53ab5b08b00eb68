"""The config schema: one source for every config node's keys, types, ranges and defaults — the signature of
the constructor its `_target_` names (read from the source, without importing torch) — and the checks that
run on a composed config before anything is imported or created (`ad.schema.check`; the command line: `ad.launch.preflight`)."""
