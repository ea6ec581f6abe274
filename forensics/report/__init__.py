"""Reports of results: the rich terminal view, the versioned JSON documents, the HTML report."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and its noun, singular for one: ``counted(1, "image")`` is ``1 image``, ``counted(12000, "image")``
    ``12,000 images``, ``counted(3, "cache entry", "cache entries")`` ``3 cache entries``."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


def cluster_text(compute: dict) -> str | None:
    """The Ray cluster a report's ``compute`` ran on, in words: ``the Ray 2.60.0 cluster at HOST:6379 (3 nodes,
    12 actors)``, ``a Ray cluster`` for a report that does not say which; None for this process."""
    if compute.get("engine") != "ray":
        return None
    ray = compute.get("ray")
    if not ray:
        return "a Ray cluster"
    return (f"the Ray {ray['version']} cluster at {ray['address']} ({counted(ray['nodes'], 'node')}, "
            f"{counted(ray['actors'], 'actor')})")
