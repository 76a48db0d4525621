"""Triangle meshes shared by the tasks: reading and normalising input meshes (:mod:`.io`), exact queries through a
BVH (:mod:`.bvh`), marching-cubes extraction from a neural field (:mod:`.extract`), geometric metrics
(:mod:`.metrics`) and shaded renders (:mod:`.shade`)."""
