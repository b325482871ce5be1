"""The report models and renderers of the flows, apart from the flows that fill them."""
