"""Views of the model: matplotlib figures and ipywidgets, one module per topic (imported lazily)."""
