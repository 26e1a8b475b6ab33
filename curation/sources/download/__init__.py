"""Image downloads for sources that list URLs (LAION, OBELICS): our fetcher, img2dataset, and their Ray stage."""
