"""Reports of results: the rich terminal view, the versioned JSON documents, the HTML report."""
