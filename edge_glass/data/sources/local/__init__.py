"""Datasets already on disk: COCO captions JSON, Karpathy splits JSON, tables (CSV/TSV/JSONL/Parquet),
and WebDataset tar shards (img2dataset, LAION-CLAP). Each ``download.local`` entry is one source.

Media paths come from the user's file, so every one is checked: it must resolve (symlinks followed)
under ``media_root``, exist, be non-empty and below ``download.max_file_mb``; anything else is a
reject with its reason. An annotation file that cannot be read at all is a systemic fault
(:class:`DataError`, naming the file) and stops the stage.

No entry of the user's file is skipped silently: an entry that cannot become an item (a COCO
annotation whose ``image_id`` has no image, a non-object entry, a table row that contradicts an
earlier row of its id, a tar member that is not a plain file or a second image of one key) is a
reject with its reason, under an id naming where it is (``coco/annotations[17]``, ``t/42#row7``).
"""

from edge_glass.data.sources.local import (  # noqa: F401  (registers each format)
    coco,
    karpathy,
    table,
    webdataset,
)
