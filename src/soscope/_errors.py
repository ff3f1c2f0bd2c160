"""Errors raised by soscope: one family, so users can catch them together."""


class SoscopeError(Exception):
    """Base class of every error soscope raises on purpose."""


class SoscopeInputError(SoscopeError, ValueError):
    """The input data or an argument is unusable; the message says what is wrong and what to set."""


class ModelCompatibilityError(SoscopeError, ValueError):
    """A saved model does not fit the data it is applied to (features, modalities, settings)."""


class TrainingDivergedError(SoscopeError, FloatingPointError):
    """Training produced a non-finite loss; the message says which settings to change."""
