"""The user's own model and data, as a recipe names them: a factory, weights, a local
transformers folder; npz arrays, an image folder or a data factory. Nothing is downloaded and
no weights file is unpickled."""

from edgeopt.sources.data import DataSource, load_data
from edgeopt.sources.models import ModelSource, load_model

__all__ = ["DataSource", "ModelSource", "load_data", "load_model"]
