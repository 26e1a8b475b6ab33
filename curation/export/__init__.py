"""Exports of built datasets to other tools' layouts."""
