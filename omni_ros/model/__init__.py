"""MiniCPM-o-4.5-shaped model for omni_ros: config, modules, tokenizer, the waveform stage's
modules, checkpoint writer and loader. Submodules import torch/transformers; this package file
stays light. The session that runs the model is omni_ros.session; the backends omni_ros.runtime.

    from omni_ros.model.loader import load_model, CheckpointError
"""
