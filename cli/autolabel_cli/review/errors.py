"""The one error of the review functions."""

from __future__ import annotations


class ReviewError(ValueError):
    """Bad input: the message names the file, line, image or label at fault. Nothing was written."""
