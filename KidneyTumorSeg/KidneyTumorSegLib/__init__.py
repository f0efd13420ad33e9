"""KidneyTumorSeg engine: geometry, networks, cascade inference and the MRML bridge (no Slicer imports)."""
__version__ = "0.1.0"
