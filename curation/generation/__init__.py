"""Generating training data with LLMs: Docmatix-style document QA and the engines that run the models."""
