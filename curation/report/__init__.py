"""Reports on built datasets: the audit (console, markdown), the HTML audit page, the dataset card, comparisons,
readable samples, and the one table renderer they share."""
