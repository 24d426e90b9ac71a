"""Client-side optimization: runs under a server lease, and the search algorithms."""
