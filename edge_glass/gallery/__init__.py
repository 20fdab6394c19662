"""A gallery: the media a person wants to search, embedded once by a trained model and searched by query.

``listing`` finds a gallery's media (a folder tree, a ``download.local`` entry, a split of the workspace),
``store`` is the index format on disk (embedding shards, a table of rows, ``index.json``) and its resumable
writing, ``search`` the exact chunked top-k, ``ann`` the optional approximate index (faiss). The model is
passed in by the commands (``edge_glass.index`` / ``search`` / ``serve``): this part never loads one.
"""
