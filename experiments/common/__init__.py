"""Helpers shared by the experiment scripts (device meshes, ...)."""
