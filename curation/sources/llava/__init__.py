"""LLaVA-style conversation files (a JSON list or JSON lines) as ``sft`` records."""
