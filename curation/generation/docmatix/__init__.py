"""Docmatix-style generation of document question/answer pairs from PDF text."""
