"""cryocloud: cloud-native cryo-electron tomography processing.

Tilt series and tomograms live as OME-Zarr in object storage; every stage is a Dask graph.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryocloud")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
