"""Own captures: ``ngp process-data`` turns a video or a folder of photos into a NeRF dataset (issue 16, part 1).

The pipeline, as instant-ngp's ``scripts/colmap2nerf.py`` and nerfstudio's ``ns-process-data`` run it:

1. :mod:`~ngp_cli.capture.frames`: the sharpest frame of each window of a video (imageio-ffmpeg), or the photos of a
   folder, copied (or box-downscaled) into ``OUT_DIR/images/``;
2. :mod:`~ngp_cli.capture.sfm`: structure from motion through pycolmap (SIFT, exhaustive or sequential matching,
   incremental mapping; the model that registered the most images);
3. :mod:`~ngp_cli.capture.convert`: COLMAP's poses in instant-ngp's colmap2nerf conventions (OpenGL cameras, up along
   +z, centred on the point the cameras look at, scaled to an average camera distance of 4), the intrinsics, a chosen
   ``aabb_scale`` and the sparse points in the same frame;
4. :mod:`~ngp_cli.capture.process`: the whole run, written atomically into ``OUT_DIR``; :mod:`~ngp_cli.capture.command`
   declares the ``ngp process-data`` command.

pycolmap is the optional ``capture`` extra (``pip install 'ngp-cli[capture]'``); it is imported only when the command
runs. Nothing here imports torch, and importing this package imports nothing heavy.
"""
