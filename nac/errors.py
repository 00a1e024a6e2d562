"""The exceptions NAC raises. Every error a user can cause is a subclass of `NacError`."""


class NacError(Exception):
    """Base class of every error NAC raises on bad input (files, shapes, models, options)."""


class NacFormatError(NacError):
    """A `.nac` file (or its external weights file) is missing, truncated, corrupt or of an
    unsupported version. The message names the file and, where known, the section."""


class NacExportError(NacError):
    """A model cannot be exported: unsupported ATen ops (all of them listed, with the module path
    where each occurs), unsupported input types or options. Raised before anything is written."""


class NacInputError(NacError):
    """Inputs given to `Model.run` do not match the model: unknown or missing input names, wrong
    dtype, wrong rank, or a dimension outside the range the export allowed."""


class NacRuntimeError(NacError):
    """The engine cannot run a graph it loaded: an op with no kernel, or an internal shape check."""
