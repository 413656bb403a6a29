"""Data: the synthetic sequence generator (``synth``) and Cityscapes-layout datasets
(``cityscapes``). Import the submodules directly; this package imports nothing heavy."""
