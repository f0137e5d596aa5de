"""HDF5 demonstration files (robomimic format) and replay buffers."""
