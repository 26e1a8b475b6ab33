"""Near-duplicate detection: perceptual image hashes with multi-index Hamming search (``hashing``, ``index``),
MinHash signatures of texts (``minhash``) and the out-of-core LSH search (``lsh``). Import the modules
themselves: importing this package must stay light (workers hash images without loading datasketch)."""
