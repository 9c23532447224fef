"""The model session: the MiniCPM-o 4.5 protocols (duplex, turn-based) over a backend's graphs.

    from omni_ros.session.session import OmniSession
    from omni_ros.session.options import SessionOptions

Layering: this package imports omni_ros.flow (the contract it satisfies) and omni_ros.model
(configs, tokenizer, the reference voice, the waveform stage's constants), never
omni_ros.runtime; backends in omni_ros.runtime implement `omni_ros.session.compute.Compute`
and build sessions.
"""
