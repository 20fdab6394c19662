"""Raw data to manifest and media shards: media checks, shards, manifest, splits, sources."""
