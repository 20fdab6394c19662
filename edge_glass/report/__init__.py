"""The report stage: reports/index.html (retrieval examples with media, worst failures, captions) and the markdown report."""
