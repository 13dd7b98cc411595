"""Identity resolution: the identity graph, its connected components and stable person ids."""
