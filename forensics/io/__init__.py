"""Reading and writing: image sets in (one decode, normalise and content-hash path), atomic writes out,
content hashes."""
