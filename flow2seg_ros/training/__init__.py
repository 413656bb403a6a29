"""Training pieces behind ``flow2seg-train`` (import the submodules directly):

``config`` (schema, YAML and ``--key value`` overrides), ``dataset`` (samples with flow as the
node computes it, and the flow cache), ``model`` (model, optimizer, LR schedule), ``checkpoint``
(safetensors + JSON sidecar), ``loop`` (training steps and held-out validation),
``distributed`` (DDP set-up under torchrun) and ``card`` (the trained model's card).
"""
