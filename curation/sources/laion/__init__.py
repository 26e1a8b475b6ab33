"""LAION subsets: out-of-core metadata selection, img2dataset downloads, conversion into pair shards."""
