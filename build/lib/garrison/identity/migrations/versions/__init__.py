"""Revision scripts (a package only so that they are installed with Garrison)."""
