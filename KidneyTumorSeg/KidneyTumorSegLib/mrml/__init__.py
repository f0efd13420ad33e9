"""The MRML bridge: engine results as 3D Slicer nodes and back (inside Slicer or on ``slicer-core``).

Only this package imports ``slicer``; the engine never does. Outside Slicer it needs the
``slicer-core`` package (``pip install 'kidneytumorseg[mrml]'``).
"""
try:
    import slicer  # noqa: F401
    import vtk  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("KidneyTumorSegLib.mrml needs 3D Slicer or the 'slicer-core' package "
                      "(pip install 'kidneytumorseg[mrml]')") from error
