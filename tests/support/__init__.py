"""Helpers shared by several test folders (plain functions and constants; fixtures stay in
conftest files)."""
