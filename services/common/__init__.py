"""Pieces shared by the three services."""
