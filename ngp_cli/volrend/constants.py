"""Constants of instant-ngp's NeRF volume rendering (``src/testbed_nerf.cu``), shared by the torch references of
:mod:`ngp_cli.volrend` and the kernel bindings of :mod:`ngp_cli.cuda.nerf`. Imports nothing but the standard library.
"""

from __future__ import annotations

__all__ = ["GRID_CELLS", "GRID_SIZE", "MIN_CONE_STEPSIZE", "MIN_OPTICAL_THICKNESS", "MIN_TRANSMITTANCE", "N_STEPS",
           "SEED_OPTICAL_THICKNESS", "SQRT3"]

SQRT3 = 1.7320508075688772
GRID_SIZE = 128  # NERF_GRIDSIZE: cells per cascade side
GRID_CELLS = GRID_SIZE ** 3
N_STEPS = 1024  # NERF_STEPS: steps along the unit cube's diagonal
MIN_CONE_STEPSIZE = SQRT3 / N_STEPS
MIN_OPTICAL_THICKNESS = 0.01  # NERF_MIN_OPTICAL_THICKNESS: occupancy threshold
MIN_TRANSMITTANCE = 1e-4  # instant-ngp's EPSILON for early ray termination
# ngp's own: the optical thickness a cell seeded from sparse points starts with (nerf.occupancy_init=points). 100x the
# occupancy threshold, so seeded cells stay occupied for ~90 grid updates (0.95^90 = 0.01) unless the network confirms
# them, and once they are over 1% of cascade 0 its mean, which caps the threshold, stays above 0.01: the untrained
# network's thickness of ~0.002 then leaves the other cells empty (see OccupancyGrid.seed_from_points).
SEED_OPTICAL_THICKNESS = 1.0
