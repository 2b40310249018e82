"""The engine's own exception types: one clear line for the user, never a traceback."""

from __future__ import annotations


class TinymorphError(Exception):
    """Base class: the message is a complete sentence meant for the user."""


class ModelLoadError(TinymorphError):
    """The model could not be found or loaded."""


class SAELoadError(TinymorphError):
    """The SAE path, layout, architecture or weights are wrong."""


class ShapeMismatchError(TinymorphError):
    """The SAE's width does not fit the model's residual stream."""


class FeatureIndexError(TinymorphError):
    """A feature index outside the SAE."""


class SteeringSpecError(TinymorphError):
    """A steering intervention that does not parse or does not make sense."""


class NoSAEError(TinymorphError):
    """An operation needs an SAE and none is loaded."""


class TrainError(TinymorphError):
    """Training cannot start or go on."""


class TrainingInterrupted(TinymorphError):
    """Ctrl-C: a checkpoint was saved and `--resume` continues."""
