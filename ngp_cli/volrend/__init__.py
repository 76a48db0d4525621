"""Task-independent volume rendering (nerfacc-style): the cascaded occupancy grid (:mod:`.grid`), occupancy-grid ray
marching (:mod:`.march`), front-to-back compositing (:mod:`.composite`) and rendering in rounds (:mod:`.render`), as
torch references plus the dispatch to the kernels of ``ngp_cli/cuda/nerf.cu``; the shared constants in
:mod:`.constants`.

This package imports nothing from ``ngp_cli.tasks``; ``ngp_cli.cuda.nerf`` takes its constants from
:mod:`.constants`. Import the submodules directly (this ``__init__`` imports nothing, so importing
:mod:`.constants` does not import torch).
"""
