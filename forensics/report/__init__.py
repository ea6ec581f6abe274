"""Reports of results: the rich terminal view, the versioned JSON documents, the HTML report."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and its noun, singular for one: ``counted(1, "image")`` is ``1 image``, ``counted(12000, "image")``
    ``12,000 images``, ``counted(3, "cache entry", "cache entries")`` ``3 cache entries``."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"
