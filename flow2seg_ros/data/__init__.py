"""Data: the synthetic sequence generator and the datasets read from disk.

- ``synth``: the ``flow2seg-synth`` command (writing a dataset), over ``synth_world`` (scene
  building), ``synth_textures`` (procedural appearance), ``synth_scene`` (posing and rendering a
  sequence) and ``synth_flow`` (exact ground-truth flow from the rendered geometry).
- ``cityscapes``: Cityscapes-layout frame-pair and sequence datasets (real and synthetic).
- ``flowio``: KITTI flow PNG files; ``flow_pairs``: frame pairs with ground-truth flow.

Import the submodules directly; this package imports nothing heavy.
"""
